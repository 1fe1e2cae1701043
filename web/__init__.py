"""The web front end (Flask): one package per resource (jobs, models, datasets, trainings, evaluations, schedules,
users, the audit log; auth), each with its pages and its JSON API side by side and one schema module; the API is
described at /api/openapi.json (web/openapi.py).

It imports the core (`fracture`) only, never `worker` or `trainer`: jobs and runs are recorded through the
core's state modules and sent by name through `fracture.queue`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from marshmallow import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, ServiceUnavailable
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map
from werkzeug.wsgi import LimitedStream

from fracture import logs, val_auc
from fracture.audit_text import duplicates_sentence
from fracture.config import Settings, get_settings
from fracture.db import session_factory
from fracture.queue import make_app
from web.context import machine_request
from web.spools import UploadRequest


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The Flask app factory: settings, database sessions, the task producer, access control, blueprints.

    Build the web app; `config` overrides Flask keys and may carry FRACTURE_SETTINGS (a Settings)."""
    config = dict(config or {})
    app = Flask(__name__)
    app.request_class = UploadRequest
    configured = config.pop("FRACTURE_SETTINGS", None)
    settings: Settings = configured if isinstance(configured, Settings) else get_settings()
    from web.auth import auth_config, init_auth

    app.config.update(
        FRACTURE_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_PARTS=settings.max_form_parts,
        RESULTS_PAGE_SIZE=50,
    )
    app.config.update(auth_config(settings, keyed="SECRET_KEY" in config))
    app.config.update(config)

    if settings.trusted_proxy_hops > 0:
        # Behind that many reverse proxies: the client's address (the login rate limit, /metrics' loopback rule),
        # the scheme (https for url_for, secure cookies, HSTS) and the host come from their X-Forwarded-* headers.
        # Never by default: without a proxy those headers are whatever the client chose to send.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    # Sessions are opened per request on first use; migrations are run by `fracture up` / `db upgrade`.
    app.extensions["fracture_sessions"] = session_factory(settings.database_url)
    # A producer only: the web sends tasks by name and never runs one.
    app.extensions["celery"] = make_app(settings)

    from web import audit, datasets, dicomweb, evaluations, jobs, models, schedules, system, trainings, users
    from web.context import close_db
    from web.openapi import init_api

    app.url_map.converters["int"] = RowId
    app.teardown_appcontext(close_db)
    app.add_template_filter(duplicates_sentence, "duplicates")
    app.add_template_global(val_auc.served_text, "served_val_auc")  # formatting only: templates run no queries
    app.before_request(_bind_log_ids)  # before the guard: a refused request's lines carry the ids too
    app.teardown_request(_clear_log_ids)
    init_auth(app)  # before the blueprints: its guard runs first on every request
    api = init_api(app)
    app.register_blueprint(system.pages)
    api.register_blueprint(system.api)
    # One package per resource, its pages and its API side by side (the API's routes go into /api/openapi.json).
    for resource in (jobs, models, datasets, trainings, evaluations, schedules, users, audit):
        app.register_blueprint(resource.PAGES)
        api.register_blueprint(resource.API)
    app.register_blueprint(dicomweb.PAGES)  # DICOMweb's own standard describes it, not the OpenAPI document
    # After flask-smorest's own handler, so every error keeps this app's shape.
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValidationError, _invalid)
    app.register_error_handler(OperationalError, _db_down)
    return app


def _bind_log_ids() -> None:
    """The ids in the URL (job_id, run_id, evaluation_id, ...) go on every line this request logs."""
    logs.bind(**{k: v for k, v in (request.view_args or {}).items() if k in logs.IDS})


def _clear_log_ids(_exc: BaseException | None) -> None:
    logs.clear()


def _db_down(exc: OperationalError) -> Response | tuple[Response | str, int]:
    """A database that is away or not migrated is a 503 with a reason, not a bare 500."""
    current_app.logger.error("database error: %s", exc)
    return _http_error(ServiceUnavailable(
        "The database is unavailable or not migrated (run `fracture db upgrade`). Try again shortly."
    ))


class RowId(IntegerConverter):
    """`<int:...>` in routes: a row id, at most PostgreSQL's integer, so a huge number is a 404, not a crash."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(url_map, *args, **kwargs)


def _field_messages(messages: object) -> str:
    """'name: message; other: message' from marshmallow's or webargs' messages (by location, then field)."""
    parts: list[str] = []

    def walk(value: object, path: list[str]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, path + [str(key)] if key not in ("json", "query", "form", "files", "_schema") else path)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            text = " ".join(value)
            # A schema's own sentence reads on from the field's name ("split must be ..."); marshmallow's own
            # ("Not a valid integer.") follows a colon.
            parts.append(f"{'.'.join(path) or 'body'}{' ' if text[:1].islower() else ': '}{text.rstrip('.')}")
        elif isinstance(value, list):
            for inner in value:
                walk(inner, path)
        else:
            parts.append(f"{'.'.join(path) or 'body'}: {value}")

    walk(messages, [])
    return "; ".join(parts)


def _invalid(exc: ValidationError) -> Response | tuple[Response | str, int]:
    """A request a schema refused outside webargs (a body read by hand): 400 naming the fields."""
    return _http_error(BadRequest(f"Invalid request: {_field_messages(exc.messages)}."))


def _http_error(exc: HTTPException) -> Response | tuple[Response | str, int]:
    """JSON under /api, a plain page elsewhere; 413 says what the limit is; a refused field is named."""
    code = exc.code or 500
    message = exc.description or exc.name
    extra: dict[str, Any] = {}
    refused = (getattr(exc, "data", None) or {}).get("messages")  # webargs: the schema refused the request
    if refused:
        message = f"Invalid request: {_field_messages(refused)}."
        extra["errors"] = refused
    if isinstance(exc, RequestEntityTooLarge):
        # werkzeug raises the same 413 for too many bytes and for too many form parts.
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit and _over_size(limit):
            message = f"The upload is too large: the limit is {_human(limit)} per request. Split it into batches."
        else:
            parts = current_app.config.get("MAX_FORM_PARTS")
            message = f"Too many files in one request: the limit is {parts} parts. Split it into batches."
    if machine_request():
        return jsonify({"error": message, **extra}), code
    return render_template("error.html", code=code, title=exc.name, message=message), code


def _over_size(limit: int) -> bool:
    """Whether the body was over `limit`: by its Content-Length, or a chunked body (no length) read up to the limit."""
    if (request.content_length or 0) > limit:
        return True
    stream = request.stream
    return request.content_length is None and isinstance(stream, LimitedStream) and stream.is_exhausted


def _human(n: int | None) -> str:
    if not n:
        return "unlimited"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024  # type: ignore[assignment]
    return str(n)
