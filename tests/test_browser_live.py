"""Headless Chromium: pages that follow work done elsewhere without a reload. A dataset page shows its report once
the training worker has validated it, a job page's "Add reviewed images" button follows the reviews made on it, and
an evaluation's row on the models page reaches "done" by itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import chromium_page, log_in, upload_dataset
from harness import LiveSystem, WorkerFactory, wait_for
from installation import zipped_sample

pytestmark = pytest.mark.slow


@pytest.fixture
def dataset_zip(dataset_root: Path, tmp_path: Path) -> Path:
    return zipped_sample(dataset_root, tmp_path, "live", per_class=4)


def test_dataset_job_and_evaluation_pages_follow_the_workers_without_a_reload(
    live_system: LiveSystem, celery_worker_proc: WorkerFactory, dataset_zip: Path, sample_images: list[Path],
) -> None:
    from playwright.sync_api import expect

    url = live_system.url
    files = [("files", (f"live/{n:02d}-{p.name}", p.read_bytes(), "application/octet-stream"))
             for n, p in enumerate(sample_images[:3])]
    response = live_system.http.post(f"{url}/api/jobs", files=files, timeout=60)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    wait_for(lambda: live_system.http.get(f"{url}/api/jobs/{job_id}", timeout=10).json()["final"], 180, "the job")

    with chromium_page() as watched:
        page = watched.page
        log_in(page, live_system)

        # Upload a dataset before any training worker runs: the page says it is being validated ...
        upload_dataset(page, url, dataset_zip, "live zip")
        expect(page.locator("#status")).to_have_text("validating")
        expect(page.locator("#validating")).to_contain_text("appears here when it is ready")
        # ... and once a worker has validated it, the same page shows the report: no reload by the test.
        celery_worker_proc.start(live_system.env, queues="training")
        expect(page.locator("#status")).to_have_text("ready", timeout=180_000)
        expect(page.locator("#counts")).to_contain_text("fractured")
        expect(page.locator("#live-status")).to_have_attribute("aria-live", "polite")

        # A job page: the button to add reviewed images wakes up with the first review made on the page.
        page.goto(f"{url}/jobs/{job_id}")
        add = page.locator("#add-reviewed")
        expect(add).to_be_disabled()
        page.locator("#results tbody tr").first.locator("button.agree").click()
        expect(page.locator("#progress-reviewed")).to_have_text("1")
        expect(add).to_be_enabled()

        # An evaluation started on the models page: its row reaches "done" with its figures, by itself.
        page.goto(f"{url}/models")
        evaluate = page.locator("form.evaluate").first
        evaluate.locator("select[name=dataset_id]").select_option(label="live zip (training)")
        evaluate.locator("button[type=submit]").click()
        row = page.locator("table.evaluations tbody tr[id^=evaluation-]").first
        expect(row).to_contain_text("live zip")
        status = row.locator("span.status")
        if (status.text_content() or "").strip() != "done":
            expect(status).to_have_attribute("data-live-url", re.compile(r"/api/evaluations/\d+$"))
        expect(status).to_have_text("done", timeout=180_000)
        assert re.search(r"0\.\d{3}|1\.000", row.inner_text()), row.inner_text()  # its ROC-AUC is shown
        # Under its sensitivity, the 95% interval, drawn by the live redraw like the rest of the row.
        expect(row.locator("td.sensitivity .ci")).to_have_text(re.compile(r"^[01]\.\d{3}–[01]\.\d{3}$"))
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)
