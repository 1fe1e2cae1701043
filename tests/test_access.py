"""Access: accounts and the CLI, login and its rate limit, Bearer tokens, private jobs, admin-only actions,
CSRF, security headers and the embedded first admin, against a real migrated SQLite installation."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import request, url_for
from flask.testing import FlaskClient
from installation import VENV_BIN, add_user, base_env, bearer, create_job
from sqlalchemy import select
from web_client import make_client, multipart, post_files
from werkzeug.test import TestResponse

from fracture.accounts import check_password, find_user, revoke_tokens, user_for_token
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.migrate import upgrade
from fracture.models import ApiToken, Dataset, Job, LoginFailure, ModelVersion, Schedule, TrainingRun, User
from fracture.registry import register_checkpoint
from fracture.storage import Storage
from launcher.cli import main as fracture_cli

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def admin_password(fracture_env: dict[str, str]) -> str:
    """The password of the fixture's admin `tester`."""
    return fracture_env["FRACTURE_TEST_PASSWORD"]


@pytest.fixture
def alice(fracture_env: dict[str, str]) -> dict[str, str]:
    return add_user(fracture_env, "alice")


@pytest.fixture
def bob(fracture_env: dict[str, str]) -> dict[str, str]:
    return add_user(fracture_env, "bob")


def anonymous(settings: Settings, **config: object) -> FlaskClient:
    return make_client(settings, as_user=None, **config)


def csrf_of(html: bytes) -> str:
    match = CSRF_FIELD.search(html.decode())
    assert match, "no CSRF field on the page"
    return match.group(1)


def log_in(client: FlaskClient, username: str, password: str, **kwargs: object) -> TestResponse:
    """Log in through the real form: read its CSRF token, post the credentials."""
    token = csrf_of(client.get("/login").data)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token}, **kwargs)


# ---------------------------------------------------------------- accounts and the CLI


def test_users_create_json_prints_exactly_the_credentials(fracture_env: dict[str, str], settings: Settings) -> None:
    done = subprocess.run([str(VENV_BIN / "fracture"), "users", "create", "carol", "--json"], env=fracture_env,
                          capture_output=True, text=True, timeout=120, check=True)
    creds = json.loads(done.stdout)
    assert set(creds) == {"username", "password", "token"} and creds["username"] == "carol"
    with session_scope(settings.database_url) as session:
        user = find_user(session, "carol")
        assert user is not None and not user.is_admin
        # Only an Argon2id hash and a SHA-256 of the token are stored: neither secret appears in clear.
        assert user.password_hash.startswith("$argon2id$") and creds["password"] not in user.password_hash
        assert creds["token"] not in {t.token_hash for t in session.scalars(select(ApiToken))}
        assert check_password(session, user, creds["password"]) and not check_password(session, user, "guess")
        assert user_for_token(session, creds["token"]).username == "carol"  # type: ignore[union-attr]


def test_users_cli_create_list_revoke_and_set_password(fracture_env: dict[str, str], settings: Settings) -> None:
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(fracture_cli, ["users", *args], env=fracture_env)
        assert result.exit_code == 0, result.output
        return result.output

    out = run("create", "dora", "--admin")
    assert "created admin dora" in out and "password: " in out and "API token: frt_" in out
    token = re.search(r"API token: (\S+)", out).group(1)  # type: ignore[union-attr]
    again = runner.invoke(fracture_cli, ["users", "create", "dora"], env=fracture_env)
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(fracture_cli, ["users", "create", "../root"], env=fracture_env)
    assert bad.exit_code == 1 and "username" in bad.output
    assert re.search(r"^dora\tadmin\ttokens: #\d+", run("list"), re.M)

    client = make_client(settings, token=token)
    assert client.get("/api/jobs").status_code == 200
    assert "revoked 1 token(s)" in run("revoke-token", "dora")
    assert client.get("/api/jobs").status_code == 401
    assert "revoked 0 token(s)" in run("revoke-token", "dora")

    new_password = run("set-password", "dora").rsplit(": ", 1)[1].strip()
    with session_scope(settings.database_url) as session:
        assert check_password(session, find_user(session, "dora"), new_password)


# ---------------------------------------------------------------- login, logout, the rate limit


def test_pages_send_anonymous_browsers_to_the_login_form(settings: Settings) -> None:
    client = anonymous(settings)
    response = client.get("/jobs?page=2")
    assert response.status_code == 302 and response.location.endswith("/login?next=/jobs?page%3D2")
    for url in ("/", "/models", "/training", "/jobs/abc"):
        assert client.get(url).status_code == 302, url
    assert client.get("/login").status_code == 200
    static = client.get("/static/style.css")
    assert static.status_code == 200
    static.close()
    assert client.get("/api/health").status_code == 200


def test_login_and_logout(settings: Settings, admin_password: str) -> None:
    env_user, env_password = "tester", admin_password
    client = anonymous(settings)
    wrong = log_in(client, env_user, "not-the-password")
    assert wrong.status_code == 401 and b"Wrong username or password." in wrong.data
    nobody = log_in(client, "nobody", "whatever")
    assert nobody.status_code == 401 and b"Wrong username or password." in nobody.data  # no hint a name exists

    token = csrf_of(client.get("/login?next=/jobs").data)
    ok = client.post("/login", data={"username": env_user, "password": env_password, "csrf_token": token,
                                     "next": "/jobs"})
    assert ok.status_code == 302 and ok.location == "/jobs"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # embedded: http
    page = client.get("/jobs")
    assert page.status_code == 200 and b"tester (admin)" in page.data

    logout = client.post("/logout", data={"csrf_token": csrf_of(page.data)})
    assert logout.status_code == 302 and logout.location == "/login"
    assert client.get("/jobs").status_code == 302


def test_login_never_redirects_off_site(settings: Settings, admin_password: str) -> None:
    password = admin_password
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        client = anonymous(settings)
        token = csrf_of(client.get("/login").data)
        r = client.post("/login", data={"username": "tester", "password": password, "csrf_token": token,
                                        "next": target})
        assert r.status_code == 302 and r.location == "/", target


def test_changing_the_password_ends_existing_sessions(settings: Settings, alice: dict[str, str]) -> None:
    from fracture.accounts import set_password

    client = anonymous(settings)
    assert log_in(client, "alice", alice["password"]).status_code == 302
    assert client.get("/jobs").status_code == 200
    with session_scope(settings.database_url) as session:
        set_password(session, "alice")
    assert client.get("/jobs").status_code == 302


def test_failed_logins_are_rate_limited_per_user_and_address(
    settings: Settings, alice: dict[str, str], admin_password: str
) -> None:
    client = anonymous(settings)
    for _ in range(5):
        assert log_in(client, "alice", "wrong password").status_code == 401
    blocked = log_in(client, "alice", alice["password"])  # even the right password now waits
    assert blocked.status_code == 429
    assert b"Too many failed logins" in blocked.data and 1 <= int(blocked.headers["Retry-After"]) <= 301
    # Counted in the database: another web process (a second app) refuses too.
    assert log_in(anonymous(settings), "alice", alice["password"]).status_code == 429
    # Another address is not locked out with it, and another account from this address neither.
    elsewhere = anonymous(settings)
    elsewhere.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    assert log_in(elsewhere, "alice", alice["password"]).status_code == 302
    assert log_in(anonymous(settings), "tester", admin_password).status_code == 302


def _behind_proxy(settings: Settings, hops: int, client_address: str) -> FlaskClient:
    """An anonymous client whose requests come through a local reverse proxy, on behalf of `client_address`."""
    client = anonymous(replace(settings, trusted_proxy_hops=hops))
    client.environ_base.update(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=client_address,
                               HTTP_X_FORWARDED_PROTO="https", HTTP_X_FORWARDED_HOST="fracture.example.org",
                               # A browser's same-origin Referer: over https the CSRF check wants it on this host.
                               HTTP_REFERER="https://fracture.example.org/login")
    return client


def _seen_by_the_app(settings: Settings) -> dict[str, object]:
    """The client address, scheme and external URL an app sees for a request forwarded by a proxy (from 127.0.0.1)."""
    client = make_client(settings)
    client.application.add_url_rule("/where", "where", lambda: {
        "address": request.remote_addr, "secure": request.is_secure, "login": url_for("auth.login", _external=True)})
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "fracture.example.org"}
    seen: dict[str, object] = client.get("/where", headers=headers).get_json()
    return seen


def test_behind_a_trusted_proxy_each_client_address_has_its_own_login_limit(
    settings: Settings, alice: dict[str, str]
) -> None:
    first, second = _behind_proxy(settings, 1, "203.0.113.7"), _behind_proxy(settings, 1, "198.51.100.9")
    for _ in range(5):
        assert log_in(first, "alice", "wrong password").status_code == 401
    assert log_in(first, "alice", alice["password"]).status_code == 429
    # The proxy's own address (127.0.0.1 for both) is not the key: the second client is not locked out.
    assert log_in(second, "alice", alice["password"]).status_code == 302
    with session_scope(settings.database_url) as session:
        assert set(session.scalars(select(LoginFailure.address))) == {"203.0.113.7"}
    # The proxy's scheme and host are the request's: https (HSTS is sent), and external URLs name the public host.
    assert first.get("/login").headers["Strict-Transport-Security"] == "max-age=31536000"
    assert _seen_by_the_app(replace(settings, trusted_proxy_hops=1)) == {
        "address": "203.0.113.7", "secure": True, "login": "https://fracture.example.org/login"}


def test_without_a_trusted_proxy_a_forged_forwarded_for_cannot_dodge_the_login_limit(
    settings: Settings, alice: dict[str, str]
) -> None:
    assert settings.trusted_proxy_hops == 0  # the default: X-Forwarded-* are ignored
    for n in range(5):
        assert log_in(_behind_proxy(settings, 0, f"10.9.8.{n}"), "alice", "wrong password").status_code == 401
    assert log_in(_behind_proxy(settings, 0, "10.9.8.200"), "alice", alice["password"]).status_code == 429
    with session_scope(settings.database_url) as session:
        assert set(session.scalars(select(LoginFailure.address))) == {"127.0.0.1"}
    response = _behind_proxy(settings, 0, "10.9.8.201").get("/login")
    assert "Strict-Transport-Security" not in response.headers  # a forged X-Forwarded-Proto is not https either
    assert _seen_by_the_app(settings) == {"address": "127.0.0.1", "secure": False, "login": "http://localhost/login"}


def test_the_window_passes(settings: Settings, alice: dict[str, str]) -> None:
    client = anonymous(settings, LOGIN_WINDOW_S=1, LOGIN_MAX_FAILURES=2)
    for _ in range(2):
        assert log_in(client, "alice", "wrong").status_code == 401
    assert log_in(client, "alice", alice["password"]).status_code == 429
    import time

    time.sleep(1.1)  # the window itself is what is tested: one second
    assert log_in(client, "alice", alice["password"]).status_code == 302


# ---------------------------------------------------------------- Bearer tokens


def test_bearer_tokens_and_revocation(settings: Settings, alice: dict[str, str]) -> None:
    client = anonymous(settings)
    missing = client.get("/api/jobs")
    assert missing.status_code == 401 and "Bearer" in missing.get_json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer frt_made-up", "Basic YWxpY2U6eA==", "Bearer "):
        r = client.get("/api/jobs", headers={"Authorization": header})
        assert r.status_code == 401 and "invalid or revoked" in r.get_json()["error"], header

    assert client.get("/api/jobs", headers=bearer(alice["token"])).status_code == 200
    with session_scope(settings.database_url) as session:
        assert revoke_tokens(session, "alice") == 1
    revoked = client.get("/api/jobs", headers=bearer(alice["token"]))
    assert revoked.status_code == 401 and "invalid or revoked" in revoked.get_json()["error"]
    # A page asked with a revoked token is refused too, not quietly sent to the login form.
    assert client.get("/jobs", headers=bearer(alice["token"])).status_code == 401


# ---------------------------------------------------------------- each job belongs to its creator


def test_other_users_get_404_on_a_job(
    settings: Settings, fracture_env: dict[str, str], alice: dict[str, str], bob: dict[str, str],
    sample_images: list[Path],
) -> None:
    as_alice = make_client(settings, token=alice["token"])
    as_bob = make_client(settings, token=bob["token"])
    as_admin = make_client(settings)
    job_id = post_files(as_alice, [(p.read_bytes(), f"a/{p.name}") for p in sample_images[:2]]).get_json()["id"]
    with session_scope(settings.database_url) as session:
        owner = session.get(Job, job_id).owner_id  # type: ignore[union-attr]
        assert owner == find_user(session, "alice").id  # type: ignore[union-attr]

    urls = [f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/results", f"/api/jobs/{job_id}/results.csv",
            f"/jobs/{job_id}"]
    for url in urls:
        assert as_alice.get(url).status_code == 200, url
        assert as_admin.get(url).status_code == 200, url
        theirs, nothing = as_bob.get(url), as_bob.get(url.replace(job_id, "0" * 32))
        assert theirs.status_code == 404, url
        # The same page but for the id and the CSRF token (signed with a timestamp: two requests astride a second
        # differ there, which made this test fail now and then).
        assert _without_csrf(theirs.data.replace(job_id.encode(), b"ID")) == _without_csrf(
            nothing.data.replace(b"0" * 32, b"ID")), url
    assert as_bob.post(f"/api/jobs/{job_id}/dispatch").status_code == 404
    assert [j["id"] for j in as_bob.get("/api/jobs").get_json()["jobs"]] == []
    assert job_id not in as_bob.get("/jobs").get_data(as_text=True)
    assert [j["id"] for j in as_alice.get("/api/jobs").get_json()["jobs"]] == [job_id]

    # A job with no owner (made outside the web) is the admins' only.
    orphan = create_job(fracture_env, sample_images[:1])
    assert as_alice.get(f"/api/jobs/{orphan}").status_code == 404
    assert as_admin.get(f"/api/jobs/{orphan}").status_code == 200
    assert {j["id"] for j in as_admin.get("/api/jobs").get_json()["jobs"]} == {job_id, orphan}


# ---------------------------------------------------------------- admin-only actions


def ready_dataset(settings: Settings) -> int:
    """A READY training dataset (recorded directly), for a schedule to name."""
    with session_scope(settings.database_url) as session:
        dataset = Dataset(name="wrists", role="training", status="ready", source="folder", root="/nowhere")
        session.add(dataset)
        session.flush()
        return dataset.id


def _candidate(settings: Settings, checkpoint: Path) -> int:
    with session_scope(settings.database_url) as session:
        return register_checkpoint(session, Storage(settings.storage_dir), checkpoint, name="v2").id


def test_retrain_schedules_and_promotion_are_admin_only(
    settings: Settings, bob: dict[str, str], tiny_checkpoint: Path
) -> None:
    v2 = _candidate(settings, tiny_checkpoint)
    as_bob = make_client(settings, token=bob["token"])
    for url, data in (("/training/retrain", {}), ("/training/schedules", {"interval_minutes": "5"}),
                      (f"/models/{v2}/promote", {}), (f"/api/models/{v2}/promote", {})):
        r = as_bob.post(url, data=data)
        assert r.status_code == 403 and b"Only an administrator" in r.data, url
    training = as_bob.get("/training").get_data(as_text=True)
    assert 'id="retrain"' not in training and "for administrators" in training
    assert 'id="promote-' not in as_bob.get("/models").get_data(as_text=True)
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(TrainingRun)).all() == [] and session.scalars(select(Schedule)).all() == []
        assert session.get(ModelVersion, v2).status == "candidate"  # type: ignore[union-attr]

    as_admin = make_client(settings)
    assert f'id="promote-{v2}"' in as_admin.get("/models").get_data(as_text=True)
    promoted = as_admin.post(f"/api/models/{v2}/promote")
    assert promoted.status_code == 200 and promoted.get_json()["status"] == "active"
    assert as_admin.get("/api/models").get_json()["active"] == "v2"
    assert as_admin.post("/api/models/999/promote").status_code == 404
    v1 = as_admin.get("/api/models").get_json()["models"][-1]["id"]
    page = as_admin.post(f"/models/{v1}/promote", follow_redirects=True)
    assert b"is now the active model" in page.data
    added = as_admin.post("/training/schedules", data={"kind": "every", "interval": "60",
                                                       "dataset_ids": ready_dataset(settings)})
    assert added.status_code == 302
    assert as_admin.post("/training/retrain").status_code == 409  # no FRACTURE_DATASET: it could only fail
    assert make_client(replace(settings, dataset_dir=settings.home)).post("/training/retrain").status_code == 302
    with session_scope(settings.database_url) as session:
        assert len(session.scalars(select(Schedule)).all()) == 1
        assert len(session.scalars(select(TrainingRun)).all()) == 1


# ---------------------------------------------------------------- CSRF


def test_forms_and_session_uploads_need_the_csrf_token(
    settings: Settings, sample_images: list[Path], admin_password: str
) -> None:
    client = anonymous(settings)
    no_token = client.post("/login", data={"username": "tester", "password": admin_password})
    assert no_token.status_code == 400 and b"CSRF" in no_token.data
    assert log_in(client, "tester", admin_password).status_code == 302
    token = csrf_of(client.get("/training").data)

    form = {"kind": "every", "interval": "5", "dataset_ids": ready_dataset(settings)}
    refused = client.post("/training/schedules", data=form)
    assert refused.status_code == 400 and b"CSRF token is missing" in refused.data
    forged = client.post("/training/schedules", data={**form, "csrf_token": "x" + token[1:]})
    assert forged.status_code == 400
    assert client.post("/training/schedules", data={**form, "csrf_token": token}).status_code == 302
    assert client.post("/logout").status_code == 400  # a forged logout is refused too

    # The upload page's script sends the token as a header; without it a cookie-borne upload is refused.
    body, content_type = multipart([(sample_images[0].read_bytes(), "a.jpg")])
    bare = client.post("/api/jobs", data=body, content_type=content_type)
    assert bare.status_code == 400 and "CSRF" in bare.get_json()["error"]
    sent = client.post("/api/jobs", data=body, content_type=content_type, headers={"X-CSRFToken": token})
    assert sent.status_code == 201
    with session_scope(settings.database_url) as session:
        assert [s.interval_minutes for s in session.scalars(select(Schedule))] == [5]
    # A Bearer token is never sent by a browser on its own: token clients need no CSRF token.
    assert post_files(make_client(settings), [(sample_images[0].read_bytes(), "b.jpg")]).status_code == 201


# ---------------------------------------------------------------- headers


def test_security_headers_on_every_response(settings: Settings, sample_images: list[Path]) -> None:
    client = make_client(settings)
    job_id = post_files(client, [(sample_images[0].read_bytes(), "a.jpg")]).get_json()["id"]
    responses = {url: client.get(url) for url in (
        "/", "/jobs", f"/jobs/{job_id}", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/results.csv", "/api/health",
        "/api/nothing", "/static/upload.js")}
    responses["/login"] = anonymous(settings).get("/login")
    for url, r in responses.items():
        h = r.headers
        assert "script-src 'self';" in h["Content-Security-Policy"], url
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"], url
        assert h["X-Content-Type-Options"] == "nosniff" and h["X-Frame-Options"] == "DENY", url
        assert h["Referrer-Policy"] == "same-origin", url
        if url.startswith("/static/"):
            assert h.get("Cache-Control") != "no-store", url  # scripts and styles may be cached
        else:
            assert h["Cache-Control"] == "no-store", url
        r.close()
    # No inline scripts or styles that the policy would block.
    for url in ("/", f"/jobs/{job_id}", "/models", "/training"):
        html = client.get(url).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html and "<style" not in html


def test_url_paths_never_reach_the_filesystem_unchecked(settings: Settings) -> None:
    """Static files and plots are looked up under their own folder or by a recorded key, never by a raw path."""
    client = make_client(settings)
    (settings.home / "secret.txt").write_text("not for the web")
    for url in ("/static/../fracture.sqlite", "/static/..%2f..%2ffracture%2fconfig.py", "/static/%2e%2e/README.md",
                "/static//etc/passwd", "/models/1/plots/..%2f..%2fsecret.txt", "/jobs/..%2f..%2fsecret.txt",
                "/api/jobs/..%2Fsecret.txt/results.csv"):
        r = client.get(url, follow_redirects=True)  # werkzeug first merges "//" with a redirect
        assert r.status_code == 404 and b"not for the web" not in r.data and b"SQLite" not in r.data, url
        r.close()


# ---------------------------------------------------------------- the embedded first admin


def test_first_admin_is_created_once_and_its_token_works(tmp_path: Path) -> None:
    from launcher.supervisor import announce_first_admin

    home = tmp_path / "home"
    env = base_env(home)
    upgrade(env["DATABASE_URL"])
    settings = get_settings(env)
    printed: list[str] = []
    assert announce_first_admin(settings, printed.append) is True
    text = "\n".join(printed)
    saved = home / "first-admin.txt"
    assert saved.stat().st_mode & 0o777 == 0o600 and str(saved) in text
    fields = dict(line.split(": ", 1) for line in saved.read_text().splitlines() if ": " in line)
    assert f"password: {fields['password']}" in text and f"API token: {fields['token']}" in text
    with session_scope(settings.database_url) as session:
        admin = find_user(session, "admin")
        assert admin is not None and admin.is_admin and check_password(session, admin, fields["password"])
        assert user_for_token(session, fields["token"]) is not None

    again: list[str] = []
    assert announce_first_admin(settings, again.append) is False and again == []
    with session_scope(settings.database_url) as session:
        assert len(session.scalars(select(User)).all()) == 1
    dispose_engines()


def _without_csrf(page: bytes) -> bytes:
    """A page with its CSRF tokens blanked."""
    return re.sub(rb'(name="csrf[-_]token" (?:content|value)=")[^"]*"', rb'\1"', page)
