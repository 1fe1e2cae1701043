"""The users page and API for admins (create, admin on or off, disable or enable, revoke tokens, reset a password;
never oneself nor the last admin) and the audit log of admin actions (users from the web, the API and the CLI,
model promotions and rollbacks, dataset registrations, schedules), against a real migrated SQLite installation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from installation import add_user
from web_client import make_client

from fracture import accounts, audit_log
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Dataset
from fracture.registry import register_checkpoint
from fracture.storage import Storage
from launcher.cli import main as fracture_cli


def audit(client: FlaskClient, **query: object) -> list[dict[str, object]]:
    response = client.get("/api/audit", query_string=query)
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["entries"])


def actions(client: FlaskClient) -> list[tuple[object, object, object]]:
    """(actor, action, subject) of every entry, oldest first."""
    return [(e["actor"], e["action"], e["subject"]) for e in reversed(audit(client, limit=200))]


# ---------------------------------------------------------------- the API


def test_an_admin_creates_a_user_whose_password_and_token_work_once_shown(client: FlaskClient,
                                                                         settings: Settings) -> None:
    made = client.post("/api/users", json={"username": "carol"})
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert body["user"]["username"] == "carol" and body["user"]["admin"] is False and body["user"]["active"] is True
    assert len(body["user"]["live_tokens"]) == 1 and body["token"].startswith("frt_")
    with session_scope(settings.database_url) as session:
        user = accounts.find_user(session, "carol")
        assert accounts.check_password(session, user, body["password"])
    assert make_client(settings, token=body["token"]).get("/api/jobs").status_code == 200
    # Shown once: the list and the user's own answer carry neither.
    listed = client.get("/api/users").get_json()["users"]
    assert [u["username"] for u in listed] == ["carol", "tester"]
    assert body["password"] not in str(listed) and body["token"] not in str(client.get("/api/users/carol").data)

    again = client.post("/api/users", json={"username": "carol"})
    assert again.status_code == 400 and "already exists" in again.get_json()["error"]
    bad = client.post("/api/users", json={"username": "../root"})
    assert bad.status_code == 400 and "username" in bad.get_json()["error"]
    assert client.get("/api/users/nobody").status_code == 404
    assert actions(client) == [("tester", "user.create", "carol")]


def test_admin_on_and_off_disable_and_enable_revoke_and_reset(client: FlaskClient, settings: Settings,
                                                              fracture_env: dict[str, str]) -> None:
    dora = add_user(fracture_env, "dora")
    as_dora = make_client(settings, token=dora["token"])
    assert as_dora.get("/api/users").status_code == 403

    made_admin = client.patch("/api/users/dora", json={"admin": True})
    assert made_admin.status_code == 200 and made_admin.get_json()["admin"] is True
    assert as_dora.get("/api/users").status_code == 200
    assert client.patch("/api/users/dora", json={"admin": False}).get_json()["admin"] is False
    assert as_dora.get("/api/users").status_code == 403

    disabled = client.patch("/api/users/dora", json={"active": False})
    assert disabled.status_code == 200 and disabled.get_json()["active"] is False
    assert as_dora.get("/api/jobs").status_code == 401  # a disabled user's token is refused ...
    assert client.patch("/api/users/dora", json={"active": True}).get_json()["active"] is True
    assert as_dora.get("/api/jobs").status_code == 200  # ... and works again once enabled

    revoked = client.post("/api/users/dora/revoke-tokens")
    assert revoked.status_code == 200 and revoked.get_json()["revoked"] == 1
    assert revoked.get_json()["user"]["live_tokens"] == []
    assert as_dora.get("/api/jobs").status_code == 401

    reset = client.post("/api/users/dora/reset-password")
    assert reset.status_code == 200
    password = reset.get_json()["password"]
    with session_scope(settings.database_url) as session:
        user = accounts.find_user(session, "dora")
        assert accounts.check_password(session, user, password)
        assert not accounts.check_password(session, user, dora["password"])

    assert actions(client) == [("tester", "user.admin_on", "dora"), ("tester", "user.admin_off", "dora"),
                               ("tester", "user.disable", "dora"), ("tester", "user.enable", "dora"),
                               ("tester", "user.tokens_revoke", "dora"), ("tester", "user.password_reset", "dora")]
    entries = audit(client, limit=2)
    assert entries[0]["text"] == "reset dora's password" and entries[0]["details"] == {"random": True}
    assert entries[1]["details"]["token_ids"] and entries[1]["created_at"].endswith("+00:00")


def test_an_admin_cannot_demote_or_disable_themselves_nor_the_last_admin(client: FlaskClient, settings: Settings,
                                                                        fracture_env: dict[str, str]) -> None:
    demote = client.patch("/api/users/tester", json={"admin": False})
    assert demote.status_code == 400
    assert demote.get_json()["error"] == "You cannot remove your own admin rights: ask another admin to do it."
    disable = client.patch("/api/users/tester", json={"active": False})
    assert disable.status_code == 400 and "cannot disable yourself" in disable.get_json()["error"]
    # Both or neither: a refused half leaves the other half undone.
    add_user(fracture_env, "erin")
    both = client.patch("/api/users/erin", json={"admin": True, "active": False})
    assert both.status_code == 200 and both.get_json()["admin"] is True and both.get_json()["active"] is False
    mixed = client.patch("/api/users/tester", json={"admin": True, "active": False})
    assert mixed.status_code == 400 and client.get("/api/users/tester").get_json()["active"] is True

    # Through the web the actor is always an enabled admin, so the last one is always oneself; the core (and the
    # CLI, which is nobody) refuses to take the last enabled admin away too.
    frank = add_user(fracture_env, "frank", admin=True)
    as_frank = make_client(settings, token=frank["token"])
    assert as_frank.patch("/api/users/tester", json={"active": False}).status_code == 200
    assert as_frank.patch("/api/users/frank", json={"admin": False}).status_code == 400
    with session_scope(settings.database_url) as session:
        assert accounts.active_admins(session) == 1
        with pytest.raises(accounts.AccountError, match="frank is the last enabled admin"):
            accounts.set_active(session, "frank", False)
        with pytest.raises(accounts.AccountError, match="frank is the last enabled admin"):
            accounts.set_admin(session, "frank", False)


def test_only_admins_see_the_users_and_audit_pages_and_apis(settings: Settings, fracture_env: dict[str, str]) -> None:
    plain = make_client(settings, token=add_user(fracture_env, "gina")["token"])
    for url in ("/api/users", "/api/users/gina", "/api/audit", "/users", "/audit"):
        assert plain.get(url).status_code == 403, url
    assert plain.post("/api/users", json={"username": "hank"}).status_code == 403
    assert plain.patch("/api/users/gina", json={"admin": True}).status_code == 403
    assert plain.post("/api/users/tester/revoke-tokens").status_code == 403
    assert plain.post("/users/gina/admin", data={"admin": "1"}).status_code == 403
    page = plain.get("/jobs").get_data(as_text=True)
    assert 'id="nav-users"' not in page and 'id="nav-audit"' not in page
    anonymous = make_client(settings, as_user=None)
    assert anonymous.get("/api/audit").status_code == 401 and anonymous.get("/users").status_code == 302


# ---------------------------------------------------------------- the pages


def test_the_users_page_shows_a_new_password_once_and_asks_before_risky_changes(client: FlaskClient) -> None:
    page = client.get("/jobs").get_data(as_text=True)
    assert 'id="nav-users"' in page and 'id="nav-audit"' in page
    created = client.post("/users", data={"username": "ivy"})
    html = created.get_data(as_text=True)
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    password = re.search(r'id="revealed-password">([^<]+)<', html).group(1)  # type: ignore[union-attr]
    assert "User ivy created." in html and len(password) >= 20
    assert password not in client.get("/users").get_data(as_text=True)  # shown that once only

    # Without JavaScript a risky form comes back as a question; confirmed (no `confirm` field), it acts.
    ask = client.post("/users/ivy/active", data={"active": "0", "confirm": "ask"})
    assert ask.status_code == 200 and "Disable ivy?" in ask.get_data(as_text=True)
    assert client.get("/api/users/ivy").get_json()["active"] is True
    done = client.post("/users/ivy/active", data={"active": "0"}, follow_redirects=True)
    assert "ivy is disabled." in done.get_data(as_text=True)
    assert client.get("/api/users/ivy").get_json()["active"] is False

    refused = client.post("/users/tester/active", data={"active": "0"}, follow_redirects=True)
    assert "Nothing was changed: you cannot disable yourself" in refused.get_data(as_text=True)
    reset = client.post("/users/ivy/reset-password", data={})
    assert reset.status_code == 200 and 'id="revealed-password"' in reset.get_data(as_text=True)
    assert client.post("/users/nobody/reset-password").status_code == 404

    audit_page = client.get("/audit").get_data(as_text=True)
    assert audit_page.index("reset ivy&#39;s password") < audit_page.index("disabled the user ivy") \
        < audit_page.index("created the user ivy")  # newest first


# ---------------------------------------------------------------- the audit log


def test_the_cli_records_its_user_changes_as_cli(fracture_env: dict[str, str], client: FlaskClient) -> None:
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(fracture_cli, ["users", *args], env=fracture_env)
        assert result.exit_code == code, result.output
        return result.output

    run("create", "jack")
    assert "jack is now an admin" in run("admin", "jack")
    assert "jack is no longer an admin" in run("admin", "jack", "--remove")
    assert "jack is disabled" in run("disable", "jack")
    assert "jack is enabled" in run("enable", "jack")
    run("set-password", "jack")
    run("create-token", "jack", "--label", "backup")
    run("revoke-token", "jack")
    assert "tester is the last enabled admin" in run("admin", "tester", "--remove", code=1)
    assert "tester is the last enabled admin" in run("disable", "tester", code=1)
    assert actions(client) == [("cli", a, "jack") for a in (
        "user.create", "user.admin_on", "user.admin_off", "user.disable", "user.enable", "user.password_reset",
        "user.token_create", "user.tokens_revoke")]


def test_promotions_rollbacks_datasets_and_schedules_are_recorded(
    client: FlaskClient, fracture_env: dict[str, str], tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as s:
        register_checkpoint(s, Storage(settings.storage_dir), tiny_checkpoint, name="v2")
        ready = Dataset(name="wrists", role="training", status="ready", source="folder", root=str(tmp_path))
        s.add(ready)
        s.flush()
        ready_id = ready.id
    first = client.get("/api/models").get_json()["active"]
    assert client.post("/api/models/v2/promote").status_code == 200
    assert client.post("/api/models/rollback").status_code == 200
    assert client.post(f"/api/models/{first}/retire").status_code == 409  # refused: nothing recorded
    assert client.post("/api/models/v2/retire").status_code == 200

    roots = tmp_path / "roots"
    (roots / "site").mkdir(parents=True)
    dispose_engines()
    admin = make_client(get_settings({**fracture_env, "DATASET_ROOTS": str(roots)}))
    registered = admin.post("/api/datasets", json={"path": str(roots / "site"), "name": "site", "role": "evaluation"})
    assert registered.status_code == 201, registered.get_json()

    made = admin.post("/api/schedules", json={"name": "nightly", "daily_at": "02:30", "dataset_ids": [ready_id]})
    assert made.status_code == 201, made.get_json()
    schedule_id = made.get_json()["id"]
    assert admin.patch(f"/api/schedules/{schedule_id}", json={"enabled": False}).status_code == 200
    assert admin.patch(f"/api/schedules/{schedule_id}", json={"enabled": True}).status_code == 200
    assert admin.patch(f"/api/schedules/{schedule_id}", json={"daily_at": "03:00"}).status_code == 200
    assert admin.delete(f"/api/schedules/{schedule_id}").status_code == 204

    assert actions(admin) == [
        ("tester", "model.promote", "v2"), ("tester", "model.rollback", first), ("tester", "model.retire", "v2"),
        ("tester", "dataset.register", "site"), ("tester", "schedule.create", "nightly"),
        ("tester", "schedule.pause", "nightly"), ("tester", "schedule.resume", "nightly"),
        ("tester", "schedule.change", "nightly"), ("tester", "schedule.delete", "nightly")]
    promoted, rolled = audit(admin, action="model.promote")[0], audit(admin, action="model.rollback")[0]
    assert promoted["details"]["replaced"] == first and rolled["details"]["replaced"] == "v2"
    assert rolled["text"] == f"rolled the active model back to {first}"
    assert audit(admin, action="dataset.register")[0]["details"]["role"] == "evaluation"


def test_the_audit_log_pages_newest_first(client: FlaskClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        for n in range(7):
            audit_log.record(session, "cli", "user.create", f"user{n}")
    first = client.get("/api/audit?limit=3").get_json()
    assert [e["subject"] for e in first["entries"]] == ["user6", "user5", "user4"]
    second = client.get(f"/api/audit?limit=3&before={first['next_before']}").get_json()
    assert [e["subject"] for e in second["entries"]] == ["user3", "user2", "user1"]
    last = client.get(f"/api/audit?limit=3&before={second['next_before']}").get_json()
    assert [e["subject"] for e in last["entries"]] == ["user0"] and last["next_before"] is None
    for bad in ("limit=0", "limit=201", "before=0", "before=x", "action=user.explode"):
        response = client.get(f"/api/audit?{bad}")
        assert response.status_code == 400 and bad.split("=")[0] in response.get_json()["error"], bad
    html = client.get(f"/audit?limit=3&before={first['next_before']}").get_data(as_text=True)
    assert "created the user user3" in html and "user4" not in html and 'id="older"' in html
    with session_scope(settings.database_url) as session, pytest.raises(ValueError, match="unknown audit action"):
        audit_log.record(session, "cli", "user.explode", "x")
