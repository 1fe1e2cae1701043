"""Headless Chromium on /models and /training: each risky action says what it will do and asks first; dismissing the
question changes nothing; a double rollback never puts back the version just rejected; without JavaScript the
server asks instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser import chromium_page, log_in
from harness import LiveSystem

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.models import Dataset
from fracture.registry import register_checkpoint
from fracture.storage import Storage

if TYPE_CHECKING:
    from playwright.sync_api import Dialog

pytestmark = pytest.mark.slow

GATE = "on dataset 'wrists' ROC-AUC 0.375 < v1's 0.900 - 0.02"


def _dialogs() -> tuple[list[str], dict[str, bool], Callable[[Dialog], None]]:
    """The questions asked (in order), the answer to give (answer["accept"]) and the page's dialog handler."""
    asked: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if answer["accept"]:
            dialog.accept()
        else:
            dialog.dismiss()

    return asked, answer, on_dialog


def _versions(system: LiveSystem, tiny_checkpoint: Path) -> None:
    """v2, which the promotion gate refused (test ROC-AUC 0.375), and v3, a plain candidate."""
    settings = get_settings(system.env)
    with session_scope(settings.database_url) as s:
        refused = register_checkpoint(s, Storage(settings.storage_dir), tiny_checkpoint, name="v2")
        refused.decision = f"not promoted: {GATE}"
        refused.metrics = {"test": {"n": 16, "roc_auc": 0.375}}
        register_checkpoint(s, Storage(settings.storage_dir), tiny_checkpoint, name="v3")


def _active(system: LiveSystem) -> str:
    return str(system.http.get(f"{system.url}/api/models", timeout=10).json()["active"])


def test_actions_name_versions_ask_first_and_rollback_never_toggles(
    live_system: LiveSystem, tiny_checkpoint: Path
) -> None:
    from playwright.sync_api import expect

    _versions(live_system, tiny_checkpoint)
    url = live_system.url
    asked, answer, on_dialog = _dialogs()

    with chromium_page(height=900) as watched:
        page = watched.page
        page.on("dialog", on_dialog)
        log_in(page, live_system)
        page.goto(f"{url}/models")
        expect(page.locator("#rollback")).to_have_count(0)  # only v1 was ever active

        # "Make active" on the version the gate refused: the question names both versions and the gate's reason.
        promote = page.get_by_role("button", name="Make v2 active instead of v1")
        promote.click()
        assert len(asked) == 1
        assert asked[0].startswith("Make v2 the active model instead of v1?")
        assert f"The promotion gate refused v2: {GATE}." in asked[0] and "Test ROC-AUC: v2 0.375" in asked[0]
        page.wait_for_timeout(500)  # dismissed: no request went out
        assert page.url == f"{url}/models" and _active(live_system) == "v1"
        expect(page.locator(".banner.ok")).to_have_count(0)
        page.get_by_role("button", name="Retire v3").click()  # retiring asks too
        assert asked[-1].startswith("Retire v3?")
        page.wait_for_timeout(500)
        models = live_system.http.get(f"{url}/api/models", timeout=10).json()["models"]
        assert {m["version"]: m["status"] for m in models}["v3"] == "candidate"

        answer["accept"] = True
        promote.click()
        expect(page.locator(".banner.ok")).to_contain_text("Model v2 is now the active model")
        page.get_by_role("button", name="Make v3 active instead of v2").click()
        expect(page.locator(".banner.ok")).to_contain_text("Model v3 is now the active model")
        assert _active(live_system) == "v3"

        # The rollback says where it goes; a double click rolls back once, to v2, never back to v3.
        rollback = page.locator("#rollback")
        expect(rollback).to_have_text("Roll back to v2")
        before = len(asked)
        rollback.dblclick()
        expect(page.locator(".banner.ok")).to_contain_text("Rolled back: v2 is active again; v3 is retired.")
        assert asked[before].startswith("Roll back to v2?") and "A further rollback would go to v1" in asked[before]
        assert _active(live_system) == "v2"

        # The next rollback goes further back (v1), and dismissing its question changes nothing.
        expect(rollback).to_have_text("Roll back to v1")
        answer["accept"] = False
        rollback.click()
        assert "instead of v2" in asked[-1] and "No further rollback will be possible" in asked[-1]
        page.wait_for_timeout(500)
        assert _active(live_system) == "v2"
        answer["accept"] = True
        rollback.click()
        expect(page.locator(".banner.ok")).to_contain_text("Rolled back: v1 is active again; v2 is retired.")
        expect(page.locator("#rollback")).to_have_count(0)  # nothing before v1: not offered, so no toggle
        assert _active(live_system) == "v1"
        again = live_system.http.post(f"{url}/api/models/rollback", timeout=10)
        assert again.status_code == 409 and _active(live_system) == "v1"
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)


def test_deleting_a_schedule_asks_and_dismissing_keeps_it(live_system: LiveSystem) -> None:
    from playwright.sync_api import expect

    settings = get_settings(live_system.env)
    with session_scope(settings.database_url) as s:
        dataset = Dataset(name="wrists", role="training", status="ready", source="folder", root="/nowhere")
        s.add(dataset)
        s.flush()
        dataset_id = dataset.id
    made = live_system.http.post(f"{live_system.url}/api/schedules", timeout=10,
                                 json={"name": "nightly", "dataset_ids": [dataset_id], "daily_at": "02:30"})
    assert made.status_code == 201, made.text
    asked, answer, on_dialog = _dialogs()

    with chromium_page() as watched:
        page = watched.page
        page.on("dialog", on_dialog)
        log_in(page, live_system)
        page.goto(f"{live_system.url}/training")
        delete = page.get_by_role("button", name="Delete schedule 'nightly'")
        delete.click()
        assert asked == ["Delete the schedule 'nightly', due daily at 02:30 (UTC)?\n"
                         "It will start no more training runs; the runs it started are kept. This cannot be undone."]
        page.wait_for_timeout(500)
        assert len(live_system.http.get(f"{live_system.url}/api/schedules", timeout=10).json()["schedules"]) == 1
        answer["accept"] = True
        delete.click()
        expect(page.locator(".banner.ok")).to_contain_text("Schedule 'nightly' deleted; its runs are kept.")
        assert live_system.http.get(f"{live_system.url}/api/schedules", timeout=10).json()["schedules"] == []
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)


def test_without_javascript_the_server_asks_and_cancel_changes_nothing(
    live_system: LiveSystem, tiny_checkpoint: Path
) -> None:
    from playwright.sync_api import expect

    _versions(live_system, tiny_checkpoint)
    with chromium_page(javascript=False) as watched:
        page = watched.page
        log_in(page, live_system)
        page.goto(f"{live_system.url}/models")
        page.get_by_role("button", name="Make v2 active instead of v1").click()
        step = page.locator("#confirm-step")
        expect(step).to_contain_text("Make v2 the active model instead of v1?")
        expect(step).to_contain_text(f"The promotion gate refused v2: {GATE}.")
        assert _active(live_system) == "v1"
        page.locator("#confirm-cancel").click()
        page.wait_for_url("**/models#model-*")
        assert _active(live_system) == "v1"

        page.get_by_role("button", name="Make v2 active instead of v1").click()
        page.get_by_role("button", name="Make v2 active instead of v1").click()  # the confirm step's button
        expect(page.locator(".banner.ok")).to_contain_text("Model v2 is now the active model")
        page.locator("#rollback").click()
        expect(page.locator("#confirm-step")).to_contain_text("Roll back to v1?")
        page.locator("#confirm-yes").click()
        expect(page.locator(".banner.ok")).to_contain_text("Rolled back: v1 is active again; v2 is retired.")
        expect(page.locator("#rollback")).to_have_count(0)
        assert _active(live_system) == "v1"
