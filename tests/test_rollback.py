"""Rollback never toggles: it goes to the version active before the current one, and a rollback after a rollback goes
further back (or is refused). Risky page forms ask first: without JavaScript the server answers with a confirm step,
and a form sent twice or from an out-of-date page changes nothing. The JSON API stays one call."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from fracture import migrate
from fracture.config import Settings
from fracture.db import make_engine, session_scope
from fracture.models import Dataset, ModelActivation, ModelVersion, Schedule
from fracture.registry import (
    RegistryError,
    active_version,
    find_version,
    previous_active,
    promote,
    register_checkpoint,
    rollback,
    rollback_path,
)
from fracture.storage import Storage

REFUSED = "not promoted: on dataset 'wrists' ROC-AUC 0.375 < v1's 0.900 - 0.02"


def _candidates(settings: Settings, checkpoint: Path, *names: str) -> None:
    with session_scope(settings.database_url) as s:
        for name in names:
            register_checkpoint(s, Storage(settings.storage_dir), checkpoint, name=name)


def _refused_candidate(settings: Settings, checkpoint: Path, name: str) -> None:
    """A candidate the promotion gate refused, with a poor test ROC-AUC."""
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, Storage(settings.storage_dir), checkpoint, name=name)
        version.decision = REFUSED
        version.metrics = {"test": {"n": 16, "roc_auc": 0.375}}


def _promote(settings: Settings, name: str) -> None:
    with session_scope(settings.database_url) as s:
        version = find_version(s, name)
        assert version is not None
        promote(s, version)


def _rollback(settings: Settings) -> tuple[str, str | None]:
    with session_scope(settings.database_url) as s:
        target, replaced = rollback(s)
        return target.name, replaced.name if replaced else None


def _state(settings: Settings) -> tuple[str | None, list[str]]:
    """(the active version's name, the versions successive rollbacks would reach)."""
    with session_scope(settings.database_url) as s:
        active = active_version(s)
        return (active.name if active else None), [v.name for v in rollback_path(s, steps=10)]


# ---------------------------------------------------------------- the registry's rule


def test_double_rollback_never_reactivates_the_rejected_version(settings: Settings, tiny_checkpoint: Path) -> None:
    _refused_candidate(settings, tiny_checkpoint, "v3")
    assert _state(settings) == ("v1", [])  # only v1 was ever active: nothing to roll back to
    _promote(settings, "v3")
    assert _state(settings) == ("v3", ["v1"])
    assert _rollback(settings) == ("v1", "v3")
    assert _state(settings) == ("v1", [])  # v3 was rejected: a second rollback is not offered...
    with pytest.raises(RegistryError, match="no previously active version"), session_scope(settings.database_url) as s:
        rollback(s)
    with session_scope(settings.database_url) as s:  # ... and the refused one changed nothing
        assert active_version(s).name == "v1"  # type: ignore[union-attr]
        assert find_version(s, "v3").status == "retired"  # type: ignore[union-attr]


def test_rollbacks_walk_back_through_the_history(settings: Settings, tiny_checkpoint: Path) -> None:
    _candidates(settings, tiny_checkpoint, "v2", "v3", "v4")
    for name in ("v2", "v3", "v3", "v4"):  # promoting the active one again records nothing
        _promote(settings, name)
    assert _state(settings) == ("v4", ["v3", "v2", "v1"])
    assert _rollback(settings) == ("v3", "v4")
    assert _rollback(settings) == ("v2", "v3")  # further back, not v4 again
    assert _state(settings) == ("v2", ["v1"])

    # A promotion after rollbacks starts from where they left: its rollback goes to v2, never to v3 or v4.
    _promote(settings, "v4")
    assert _state(settings) == ("v4", ["v2", "v1"])
    assert _rollback(settings) == ("v2", "v4")
    with session_scope(settings.database_url) as s:
        assert previous_active(s).name == "v1"  # type: ignore[union-attr]
        live = s.scalars(select(ModelActivation).where(ModelActivation.rolled_back_at.is_(None))
                         .order_by(ModelActivation.id)).all()
        names = {v.id: v.name for v in s.scalars(select(ModelVersion))}
        assert [names[a.version_id] for a in live] == ["v1", "v2"]


def test_a_version_active_twice_is_gone_back_to_in_order(settings: Settings, tiny_checkpoint: Path) -> None:
    _candidates(settings, tiny_checkpoint, "v2")
    for name in ("v2", "v1", "v2"):
        _promote(settings, name)
    assert _state(settings) == ("v2", ["v1", "v2", "v1"])
    assert _rollback(settings) == ("v1", "v2")
    assert _rollback(settings) == ("v2", "v1")  # the v2 of before the v1 of before: history, not a toggle
    assert _rollback(settings) == ("v1", "v2")
    assert _state(settings) == ("v1", [])


# ---------------------------------------------------------------- the JSON API: one call, the same rule


def test_api_rollback_follows_the_rule_in_one_call(client: FlaskClient, settings: Settings,
                                                   tiny_checkpoint: Path) -> None:
    _refused_candidate(settings, tiny_checkpoint, "v3")
    assert client.post("/api/models/v3/promote").get_json()["status"] == "active"
    assert client.post("/api/models/v3/promote").get_json()["status"] == "active"  # twice: still one activation

    wrong = client.post("/api/models/rollback", json={"to": "v3"})
    assert wrong.status_code == 409 and "goes to v1, not v3" in wrong.get_json()["error"]
    back = client.post("/api/models/rollback", json={"to": "v1"})
    assert back.status_code == 200, back.get_json()
    assert back.get_json()["active"]["version"] == "v1" and back.get_json()["replaced"]["version"] == "v3"

    again = client.post("/api/models/rollback")  # the double click, through the API
    assert again.status_code == 409 and "no previously active version" in again.get_json()["error"]
    models = {m["version"]: m for m in client.get("/api/models").get_json()["models"]}
    assert client.get("/api/models").get_json()["active"] == "v1"
    assert models["v3"]["status"] == "retired" and models["v3"]["decision"].startswith("retired by a rollback")


# ---------------------------------------------------------------- the page: says what it does, asks first


def test_models_page_names_each_action_and_its_consequence(client: FlaskClient, settings: Settings,
                                                           tiny_checkpoint: Path) -> None:
    _refused_candidate(settings, tiny_checkpoint, "v2")
    page = client.get("/models").get_data(as_text=True)
    assert 'id="rollback"' not in page  # only v1 was ever active
    assert "Make v2 active instead of v1</button>" in page and "Retire v2</button>" in page
    assert "The promotion gate refused v2: on dataset &#39;wrists&#39; ROC-AUC 0.375" in page  # in data-confirm
    assert "Test ROC-AUC: v2 0.375" in page
    assert 'src="/static/confirm.js"' in page

    client.post("/api/models/v2/promote")
    page = client.get("/models").get_data(as_text=True)
    assert "Roll back to v1</button>" in page
    assert "No further rollback will be possible" in page
    client.post("/api/models/rollback")
    assert 'id="rollback"' not in client.get("/models").get_data(as_text=True)


def test_without_javascript_the_server_asks_first(client: FlaskClient, settings: Settings,
                                                  tiny_checkpoint: Path) -> None:
    _refused_candidate(settings, tiny_checkpoint, "v2")
    # The form as the page sends it when no script cleared its `confirm=ask`: a confirm step, nothing changed.
    step = client.post("/models/v2/promote", data={"confirm": "ask", "active": "v1"})
    text = step.get_data(as_text=True)
    assert step.status_code == 200 and 'id="confirm-step"' in text
    assert "Make v2 the active model instead of v1?" in text and "The promotion gate refused v2" in text
    assert 'name="active" value="v1"' in text and 'name="confirm"' not in text  # sent again, it acts
    assert client.get("/api/models").get_json()["active"] == "v1"

    done = client.post("/models/v2/promote", data={"active": "v1"}, follow_redirects=True).get_data(as_text=True)
    assert "Model v2 is now the active model" in done
    step = client.post("/models/rollback", data={"confirm": "ask", "active": "v2", "to": "v1"})
    assert "Roll back to v1?" in step.get_data(as_text=True)
    assert client.get("/api/models").get_json()["active"] == "v2"

    _candidates(settings, tiny_checkpoint, "v3")
    step = client.post("/models/v3/retire", data={"confirm": "ask"}).get_data(as_text=True)
    assert "Retire v3?" in step and 'id="confirm-cancel"' in step
    with session_scope(settings.database_url) as s:
        assert find_version(s, "v3").status == "candidate"  # type: ignore[union-attr]


def test_a_form_sent_twice_or_from_a_stale_page_changes_nothing(client: FlaskClient, settings: Settings,
                                                                tiny_checkpoint: Path) -> None:
    _candidates(settings, tiny_checkpoint, "v2", "v3")
    client.post("/api/models/v2/promote")
    client.post("/api/models/v3/promote")
    form = {"active": "v3", "to": "v2"}  # the rollback form as the page showed it
    first = client.post("/models/rollback", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Rolled back: v2 is active again; v3 is retired." in first
    second = client.post("/models/rollback", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Nothing was rolled back: the active model is now v2, not v3" in second
    assert client.get("/api/models").get_json()["active"] == "v2"

    stale = client.post("/models/v3/promote", data={"active": "v3"}, follow_redirects=True).get_data(as_text=True)
    assert "Nothing was changed: the active model is now v2" in stale
    twice = client.post("/models/v2/promote", data={"active": "v3"}, follow_redirects=True).get_data(as_text=True)
    assert "v2 is already the active model; nothing changed" in twice
    assert client.get("/api/models").get_json()["active"] == "v2"


def test_deleting_a_schedule_asks_first_without_javascript(client: FlaskClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as s:
        dataset = Dataset(name="wrists", role="training", status="ready", source="folder", root="/nowhere")
        s.add(dataset)
        s.flush()
        dataset_id = dataset.id
    sid = client.post("/api/schedules", json={"name": "nightly", "dataset_ids": [dataset_id],
                                              "daily_at": "02:30"}).get_json()["id"]
    page = client.get("/training").get_data(as_text=True)
    assert "Delete schedule 'nightly'</button>" in page
    assert "Delete the schedule &#39;nightly&#39;, due daily at 02:30 (UTC)?" in page
    step = client.post(f"/training/schedules/{sid}/delete", data={"confirm": "ask"}).get_data(as_text=True)
    assert "It will start no more training runs" in step and 'id="confirm-yes"' in step
    with session_scope(settings.database_url) as s:
        assert s.get(Schedule, sid) is not None
    assert client.post(f"/training/schedules/{sid}/delete").status_code == 302
    assert client.get("/api/schedules").get_json() == {"schedules": []}


# ---------------------------------------------------------------- the migration keeps the history it can


def test_migration_backfills_the_history_and_counts_a_rollback_as_undone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fracture.sqlite'}"
    migrate.upgrade(url, "0009")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO model_versions (id, name, status, arch, checkpoint_key, checkpoint_sha256, threshold, "
                "metrics, plots, created_at, promoted_at, retired_at, decision) VALUES "
                "(1, 'release-1', 'active', 'a', 'k', 's', 0.5, '{}', '{}', '2026-01-01', '2026-01-03', NULL, "
                "'made active again by a rollback by admin, replacing v3'), "
                "(2, 'v2', 'retired', 'a', 'k', 's', 0.5, '{}', '{}', '2026-01-01', '2026-01-01', '2026-01-02', NULL), "
                "(3, 'v3', 'retired', 'a', 'k', 's', 0.5, '{}', '{}', '2026-01-01', '2026-01-02', '2026-01-03', "
                "'retired by a rollback to release-1 by admin'), "
                "(4, 'v4', 'candidate', 'a', 'k', 's', 0.5, '{}', '{}', '2026-01-01', NULL, NULL, NULL)")
        migrate.upgrade(url)
        with session_scope(url) as s:
            rows = s.scalars(select(ModelActivation).order_by(ModelActivation.id)).all()
            assert [(a.version_id, a.rolled_back_at is not None) for a in rows] == [(2, False), (3, True), (1, False)]
            assert [v.name for v in rollback_path(s, steps=5)] == ["v2"]  # never v3, the one rolled back from
    finally:
        engine.dispose()
