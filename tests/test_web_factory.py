"""The application factory: settings, limits, Celery binding, per-request sessions, no migrations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flask import g
from pg import Cluster, pg_server, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import inspect

from fracture.config import get_settings
from fracture.db import get_engine
from web import create_app
from web.context import db


def test_factory_takes_settings_and_overrides(tmp_path: Path) -> None:
    settings = dataclasses.replace(get_settings({"FRACTURE_HOME": str(tmp_path)}), max_upload_bytes=12345)
    app = create_app({"FRACTURE_SETTINGS": settings, "TESTING": True, "MAX_FORM_PARTS": 7})
    assert app.config["FRACTURE_SETTINGS"] is settings
    assert app.config["MAX_CONTENT_LENGTH"] == 12345  # from the settings
    assert app.config["MAX_FORM_PARTS"] == 7  # the explicit config wins
    assert app.testing
    celery = app.extensions["celery"]
    assert celery.conf.broker_url == settings.broker_url
    assert celery.conf.task_acks_late is True


def test_factory_reads_the_environment_by_default(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FRACTURE_HOME", str(tmp_path))
    monkeypatch.setenv("MAX_FILES_PER_JOB", "9")
    app = create_app()
    assert app.config["FRACTURE_SETTINGS"].home == tmp_path.resolve()
    assert app.config["FRACTURE_SETTINGS"].max_files_per_job == 9


def test_each_app_is_independent(tmp_path: Path) -> None:
    a = create_app({"FRACTURE_SETTINGS": get_settings({"FRACTURE_HOME": str(tmp_path / "a")})})
    b = create_app({"FRACTURE_SETTINGS": get_settings({"FRACTURE_HOME": str(tmp_path / "b")})})
    assert a.config["FRACTURE_SETTINGS"].database_url != b.config["FRACTURE_SETTINGS"].database_url
    assert a.extensions["celery"] is not b.extensions["celery"]


def test_session_is_per_request_and_closed_at_teardown(fracture_env: dict[str, str]) -> None:
    app = create_app({"FRACTURE_SETTINGS": get_settings(fracture_env)})
    with app.test_request_context("/"):
        first = db()
        assert db() is first  # one session for the whole request
        assert "db" in g
    with app.test_request_context("/"):
        assert db() is not first
    assert not first.in_transaction()


def test_factory_does_not_migrate(tmp_path: Path) -> None:
    """Migrations belong to `fracture up` / `fracture db upgrade`; the web never makes the schema."""
    settings = get_settings({"FRACTURE_HOME": str(tmp_path)})
    app = create_app({"FRACTURE_SETTINGS": settings})
    client = app.test_client()
    response = client.get("/api/health")
    assert response.status_code == 503
    assert "fracture db upgrade" in response.get_json()["database"]
    page = client.get("/jobs", headers={"Authorization": "Bearer any"})  # looking the token up needs the schema
    assert page.status_code == 503 and b"fracture db upgrade" in page.data
    assert "jobs" not in inspect(get_engine(settings.database_url)).get_table_names()


def test_factory_sets_safe_session_cookies_and_a_private_secret_key(tmp_path: Path) -> None:
    settings = get_settings({"FRACTURE_HOME": str(tmp_path)})  # no SECRET_KEY: the shipped placeholder
    app = create_app({"FRACTURE_SETTINGS": settings})
    key_file = tmp_path / "secret-key"
    assert app.config["SECRET_KEY"] == key_file.read_text() and len(app.config["SECRET_KEY"]) == 64
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert create_app({"FRACTURE_SETTINGS": settings}).config["SECRET_KEY"] == app.config["SECRET_KEY"]
    assert app.config["SESSION_COOKIE_HTTPONLY"] and app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert app.config["SESSION_COOKIE_SECURE"] is False  # the embedded mode serves http://127.0.0.1
    behind_tls = get_settings({"FRACTURE_HOME": str(tmp_path), "SESSION_COOKIE_SECURE": "1", "SECRET_KEY": "k" * 40})
    app = create_app({"FRACTURE_SETTINGS": behind_tls})
    assert app.config["SESSION_COOKIE_SECURE"] is True and app.config["SECRET_KEY"] == "k" * 40


def test_a_database_restart_during_a_request_does_not_turn_its_answer_into_a_500(
    pg_url: str, pg_server: Cluster, tmp_path: Path,  # noqa: F811
) -> None:
    """`pg_ctl restart` ends the request's connection after its answer is made: the closing rollback fails, and the
    answer must still go out (prod-check caught /api/health answering 500 from the teardown)."""
    import psycopg

    from fracture.migrate import upgrade

    upgrade(pg_url)
    settings = dataclasses.replace(get_settings({"FRACTURE_HOME": str(tmp_path), "DATABASE_URL": pg_url}),
                                   broker_url="redis://127.0.0.1:1/0")  # no broker: health says so, 200 still
    app = create_app({"FRACTURE_SETTINGS": settings, "TESTING": True})
    database = pg_url.rsplit("/", 1)[1]
    ended: list[int] = []

    @app.after_request
    def end_every_connection(response):  # type: ignore[no-untyped-def]
        with psycopg.connect(host="127.0.0.1", port=pg_server.port, user="postgres", dbname="postgres",
                             autocommit=True) as admin:
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                 (database,)).fetchall()
        ended.append(len(rows))
        return response

    answer = app.test_client().get("/api/health")
    assert ended and ended[0] >= 1, "the request's connection was not there to end"
    assert answer.status_code == 200 and answer.get_json()["database"] == "ok", answer.get_data(as_text=True)
    # The next request gets a fresh connection.
    assert app.test_client().get("/api/health").get_json()["database"] == "ok"
