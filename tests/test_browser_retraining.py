"""Headless Chromium: upload a labelled zip dataset with its fracture boxes, train on it with a box weight and watch
the progress, compare, promote."""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import pytest
from browser import chromium_page, log_in, upload_dataset
from harness import LiveSystem, WorkerFactory
from installation import zipped_sample

from trainer.acquisition import AUDIT

pytestmark = pytest.mark.slow


@pytest.fixture
def dataset_zip(site_root: Path, tmp_path: Path) -> Path:
    """A labelled zip of the second site's real X-rays as it would send them, with the fracture boxes it drew:
    site/train/<class>/..., 10 per class, and site/boxes.csv (its rows for those images, by file name)."""
    archive = zipped_sample(site_root, tmp_path, "site", per_class=10)
    with zipfile.ZipFile(archive) as zf:
        names = {Path(n).name for n in zf.namelist()}
    with open(site_root / "boxes.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["filename"] in names and r["class"] != "humerus"]
    assert rows
    fields = ["filename", "x0", "y0", "x1", "y1"]
    text = "\n".join([",".join(fields), *(",".join(r[k] for k in fields) for r in rows)]) + "\n"
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("site/boxes.csv", text)
    return archive


def test_zip_dataset_training_progress_compare_and_promote(
    live_system: LiveSystem, celery_worker_proc: WorkerFactory, dataset_zip: Path
) -> None:
    version = ""
    from playwright.sync_api import expect

    celery_worker_proc.start(live_system.env, queues="training")
    url = live_system.url
    with chromium_page(height=900) as watched:
        page = watched.page
        log_in(page, live_system)

        # A fresh installation: the training page says a dataset is needed.
        page.goto(f"{url}/training")
        expect(page.locator("#no-dataset")).to_be_visible()

        upload_dataset(page, url, dataset_zip, "site zip")
        # The page follows the validation by itself (web/static/live.js).
        expect(page.locator("#status")).to_have_text("ready", timeout=180_000)
        expect(page.locator("#counts")).to_contain_text("fractured")

        page.goto(f"{url}/training")
        expect(page.locator("#no-dataset")).to_have_count(0)
        start = page.locator("#start-training")
        start.get_by_label("site zip").check()
        start.locator("input[name=epochs]").fill("2")
        start.locator("input[name=width]").fill("8")
        start.locator("input[name=image_size]").fill("64")
        start.locator("select[name=box_weight]").select_option("0.5")  # the zip's boxes teach the map
        page.locator("#start").click()
        page.wait_for_url(re.compile(r".*/training/\d+$"))
        # The run page polls: the epoch counter and the status move without a reload.
        expect(page.locator("#epochs")).to_have_text("2")
        expect(page.locator("#epoch")).to_have_text("2", timeout=240_000)
        expect(page.locator("#status")).to_have_text("done", timeout=240_000)
        expect(page.locator("#log")).to_contain_text("epoch")
        expect(page.locator("#curve polyline").first).to_be_attached()
        expect(page.locator("#log")).to_contain_text("fractured training images with boxes, weight 0.5")
        expect(page.locator("#curve")).to_contain_text("val pointing game (boxed images)")  # its own curve
        version = page.locator("#run-model a").inner_text().strip()
        assert version and version != "v1"

        page.goto(f"{url}/models")
        card = page.locator("section.model", has_text=version).first
        # Its card carries the robustness audit of its test split: folded, one row per acquisition change.
        audit = card.locator("details.robustness")
        expect(audit.locator("table")).not_to_be_visible()
        audit.locator("summary").click()
        expect(audit.locator("tbody tr")).to_have_count(len(AUDIT))
        expect(audit.locator("tbody tr").nth(1)).to_contain_text(AUDIT[1].name)
        card.get_by_role("link", name=re.compile("Compare with")).click()
        page.wait_for_url("**/models/compare?**")
        expect(page.locator("#version-a")).to_have_text("v1")
        expect(page.locator("#version-b")).to_have_text(version)

        page.goto(f"{url}/models")
        card = page.locator("section.model", has_text=version).first
        page.once("dialog", lambda dialog: dialog.accept())  # it asks first, naming both versions
        card.get_by_role("button", name=f"Make {version} active instead of v1").click()
        expect(page.locator(".flash, .banner").first).to_contain_text(f"Model {version} is now the active model")

        # A second run fine-tunes that version's weights: chosen on the form, named on the run's page and in its log.
        page.goto(f"{url}/training")
        start = page.locator("#start-training")
        start.get_by_label("site zip").check()
        start.locator("input[name=epochs]").fill("1")
        start.locator("input[name=width]").fill("8")
        start.locator("input[name=image_size]").fill("64")
        start.locator("input[name=lr]").fill("0.0005")
        start.locator("input[name=interpolate]").fill("0.5")
        start.locator("select[name=start_from]").select_option(version)
        page.locator("#start").click()
        page.wait_for_url(re.compile(r".*/training/\d+$"))
        expect(page.locator("#status")).to_have_text("done", timeout=240_000)
        expect(page.get_by_text(f"fine-tuned from {version}")).to_be_visible()
        expect(page.locator("body")).to_contain_text("interpolate 0.5")
        expect(page.locator("#log")).to_contain_text(f"models/{version}/model.pt")
        expect(page.locator("#log")).to_contain_text("started from the weights of")
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)

    health = live_system.http.get(f"{url}/api/health", timeout=10).json()
    assert health["model"]["active"] == version
