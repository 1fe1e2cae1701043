"""Headless Chromium logs in, uploads a folder of 20 real X-rays, watches the progress bar finish, downloads the CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from browser import chromium_page, readme_shot
from harness import LiveSystem
from installation import image_files, materialize

pytestmark = pytest.mark.slow


@pytest.fixture
def twenty_images(dataset_root: Path, tmp_path: Path) -> Path:
    """A folder of 20 real images: 5 per class from train and from val, nested as the dataset ships."""
    folder = materialize(dataset_root, tmp_path / "xrays", per_class=5, splits="train,val")
    assert len(image_files(folder)) == 20
    return folder


def test_login_folder_upload_progress_csv_and_logout(
    live_system: LiveSystem, twenty_images: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    shots = os.environ.get("FRACTURE_SCREENSHOTS")
    with chromium_page() as watched:
        page = watched.page
        page.goto(f"{live_system.url}/")
        page.wait_for_url("**/login?next=**")  # no session yet: the pages send the browser to log in
        if shots:
            readme_shot(page, f"{shots}/login.png")
        page.locator("#username").fill(live_system.env["FRACTURE_TEST_USER"])
        page.locator("#password").fill("not the password")
        page.locator("#login").click()
        expect(page.locator("#login-error")).to_have_text("Wrong username or password.")
        page.locator("#password").fill(live_system.env["FRACTURE_TEST_PASSWORD"])
        page.locator("#login").click()
        page.wait_for_url(f"{live_system.url}/")
        expect(page.locator("#signed-in")).to_have_text("tester (admin)")
        expect(page.locator("#submit")).to_be_enabled()
        page.locator("#dir-input").set_input_files(twenty_images)
        expect(page.locator("#selection")).to_contain_text("20 file(s) chosen")
        if shots:
            readme_shot(page, f"{shots}/upload.png")

        page.locator("#submit").click()
        page.wait_for_url("**/jobs/*", timeout=60_000)
        job_id = page.url.rstrip("/").rsplit("/", 1)[-1]

        progress = page.locator("#progress")
        expect(progress).to_have_attribute("max", "20")
        expect(page.locator("#progress-text")).to_have_text("20 / 20", timeout=240_000)
        expect(progress).to_have_attribute("value", "20")
        expect(page.locator("#status")).to_have_text("done", timeout=30_000)
        page.wait_for_load_state("load")
        expect(page.locator("#results tbody tr")).to_have_count(20)
        # Paths come from the folder picker, relative to the chosen folder.
        expect(page.locator("#results tbody tr").first.locator("td.path")).to_contain_text("xrays/")
        if shots:
            readme_shot(page, f"{shots}/job.png")

        with page.expect_download() as info:
            page.locator("#download-csv").click()
        saved = tmp_path / "results.csv"
        info.value.save_as(saved)

        if shots:
            for name in ("jobs", "models", "training"):
                page.goto(f"{live_system.url}/{name}")
                readme_shot(page, f"{shots}/{name}.png")

        page.locator("#logout").click()
        page.wait_for_url("**/login")
        page.goto(f"{live_system.url}/jobs/{job_id}")
        page.wait_for_url("**/login?next=**")  # the session ended with the logout
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)

    with open(saved, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == ["path", "prediction", "probability", "in_distribution", "ood_score",
                                    "model_version", "error", "study_instance_uid", "sop_instance_uid"]
    assert len(rows) == 20
    names = sorted(p.relative_to(twenty_images.parent).as_posix() for p in image_files(twenty_images))
    assert sorted(r["path"] for r in rows) == names
    for row in rows:
        # Every file has an outcome: a prediction with its probability, or an error saying why not.
        assert (row["prediction"] in ("fractured", "not fractured") and row["probability"]) or row["error"], row
        assert row["model_version"] == "v1"
    assert live_system.web.alive() and live_system.worker.alive()
    assert job_id

