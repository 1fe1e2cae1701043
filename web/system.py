"""The site itself: the health probe (API) and the icon browsers ask for."""

from __future__ import annotations

import hmac
from typing import Any

import marshmallow as ma
from flask import Blueprint, Response, abort, current_app, request, send_from_directory
from flask.typing import ResponseReturnValue
from marshmallow import fields as f
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from fracture.queue import broker_ping, worker_ping
from web.context import active_model, celery, db, settings
from web.openapi import ApiBlueprint, no_auth

pages = Blueprint("system", __name__)
api = ApiBlueprint("system_api", __name__, url_prefix="/api", description="Is the system up?")


class HealthSchema(ma.Schema):
    database = f.String(required=True, metadata={"description": "ok, or why not."})
    broker = f.String(required=True, metadata={"enum": ["ok", "down", "unknown"]})
    workers = f.Dict(metadata={"description": "The workers that answered a ping, by queue."})
    model = f.Dict(metadata={"description": "The active model version's name and id."})


@pages.get("/metrics")
def metrics() -> ResponseReturnValue:
    """The Prometheus text format (fracture.metrics), for a scraper with METRICS_TOKEN, or from this machine."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from fracture.metrics import SystemCollector

    token = settings().metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            abort(401, description="send 'Authorization: Bearer <METRICS_TOKEN>'")
    elif request.remote_addr not in ("127.0.0.1", "::1"):
        abort(403, description="set METRICS_TOKEN to scrape /metrics from another machine")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(settings(), celery()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


@pages.get("/favicon.ico")
def favicon() -> ResponseReturnValue:
    """The site's icon where browsers look for it without being told (the pages link the SVG in /static)."""
    static = current_app.static_folder or "static"
    return send_from_directory(static, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)


@api.get("/health")
@api.doc(**no_auth())
@api.response(200, HealthSchema)
@api.alt_response(503, schema=HealthSchema, description="The database is down or not migrated.")
def health() -> tuple[dict[str, Any], int]:
    """Whether the database, the broker and the workers answer, and which model is active (no account needed)."""
    try:
        db().execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return {"database": f"down: {exc.__class__.__name__}", "broker": "unknown"}, 503
    try:
        model = active_model()
    except SQLAlchemyError:
        return {"database": "not migrated: run `fracture db upgrade`", "broker": "unknown"}, 503
    app = celery()
    broker = "ok" if broker_ping(app) else "down"
    workers = worker_ping(app) if broker == "ok" else {"supported": None, "workers": []}
    return {
        "database": "ok", "broker": broker, "workers": workers,
        "model": {"active": model.name if model else None, "id": model.id if model else None},
    }, 200
