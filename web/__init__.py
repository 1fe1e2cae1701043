"""The web front end (Flask): upload form, job pages, CSV, models and training pages, and the JSON API.

It imports the core (`fracture`) only, never `worker` or `trainer`: jobs and runs are recorded through the
core's state modules and sent by name through `fracture.queue`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable
from werkzeug.wsgi import LimitedStream

from fracture.audit_text import duplicates_sentence
from fracture.config import Settings, get_settings
from fracture.db import session_factory
from fracture.queue import make_app
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

    # Sessions are opened per request on first use; migrations are run by `fracture up` / `db upgrade`.
    app.extensions["fracture_sessions"] = session_factory(settings.database_url)
    # A producer only: the web sends tasks by name and never runs one.
    app.extensions["celery"] = make_app(settings)

    from web import api, datasets, evaluations, images, models, pages
    from web.context import close_db
    from web.heatmaps import bp as heatmaps_bp
    from web.reviews import bp as reviews_bp
    from web.schedules import bp as schedules_bp
    from web.trainings import bp as trainings_bp

    app.teardown_appcontext(close_db)
    app.add_template_filter(duplicates_sentence, "duplicates")
    init_auth(app)  # before the blueprints: its guard runs first on every request
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(evaluations.bp)
    app.register_blueprint(datasets.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(schedules_bp)
    app.register_blueprint(trainings_bp)
    app.register_blueprint(heatmaps_bp)
    app.register_blueprint(reviews_bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _db_down)
    return app


def _db_down(exc: OperationalError) -> Response | tuple[Response | str, int]:
    """A database that is away or not migrated is a 503 with a reason, not a bare 500."""
    current_app.logger.error("database error: %s", exc)
    return _http_error(ServiceUnavailable(
        "The database is unavailable or not migrated (run `fracture db upgrade`). Try again shortly."
    ))


def _http_error(exc: HTTPException) -> Response | tuple[Response | str, int]:
    """JSON under /api, a plain page elsewhere; 413 says what the limit is."""
    code = exc.code or 500
    message = exc.description or exc.name
    if isinstance(exc, RequestEntityTooLarge):
        # werkzeug raises the same 413 for too many bytes and for too many form parts.
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit and _over_size(limit):
            message = f"The upload is too large: the limit is {_human(limit)} per request. Split it into batches."
        else:
            parts = current_app.config.get("MAX_FORM_PARTS")
            message = f"Too many files in one request: the limit is {parts} parts. Split it into batches."
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), code
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
