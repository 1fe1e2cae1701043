"""Headless Chromium on a fresh installation (no FRACTURE_DATASET, no dataset): the training page offers no action
that cannot work and says what to do; the routes behind the missing buttons refuse with the same advice."""

from __future__ import annotations

import pytest
from browser import chromium_page, log_in
from harness import LiveSystem

pytestmark = pytest.mark.slow


def test_a_fresh_installs_training_page_offers_nothing_doomed_and_says_what_to_do(live_system: LiveSystem) -> None:
    from playwright.sync_api import expect

    assert "FRACTURE_DATASET" not in live_system.env
    url = live_system.url
    with chromium_page() as watched:
        page = watched.page
        log_in(page, live_system)
        page.goto(f"{url}/training")
        advice = page.locator("#no-dataset")
        expect(advice).to_be_visible()
        expect(advice).to_contain_text("upload a zip")
        expect(advice).to_contain_text("FRACTURE_DATASET")
        expect(page.locator("#retrain")).to_have_count(0)  # "Retrain now" would train on nothing
        expect(page.locator("#start")).to_have_count(0)  # nor is there a dataset to tick
        expect(page.locator("text=No training runs yet.")).to_be_visible()

        # The advice's link leads to where a dataset is added.
        advice.get_by_role("link", name="Datasets").click()
        page.wait_for_url(f"{url}/datasets")
        expect(page.locator("#upload-dataset-form")).to_be_visible()
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)

    # A client that posts anyway is refused with the advice, and no run is recorded.
    retrain = live_system.http.post(f"{url}/training/retrain", timeout=10, allow_redirects=False)
    assert retrain.status_code == 409 and "FRACTURE_DATASET" in retrain.text
    api = live_system.http.post(f"{url}/api/trainings", json={"dry_run": True}, timeout=10)
    assert api.status_code == 409
    assert api.json()["error"].startswith("Cannot train: no training dataset is ready: upload a zip")
    assert live_system.http.get(f"{url}/api/trainings", timeout=10).json()["trainings"] == []
