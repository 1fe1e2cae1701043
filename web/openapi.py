"""The API's one description: flask-smorest builds the OpenAPI 3 document from each resource's schemas.

Every JSON route is declared on an `ApiBlueprint` with the marshmallow schemas it reads and answers; the same
schemas validate the request (a wrong field is a 400 naming it), serialise the answer and describe both at
`GET /api/openapi.json`. `/api/docs` shows that document with Swagger UI from the installed `swagger-ui-bundle`
package (no CDN: the pages' CSP stays `script-src 'self'`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import marshmallow as ma
from flask import Blueprint, Flask, Response, jsonify, render_template
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow.validate import OneOf, Range
from webargs.flaskparser import FlaskParser

from fracture.models import MAX_ROW_ID
from fracture.queue import BrokerUnavailable

API_VERSION = "1"
BEARER = "bearerAuth"


class _Parser(FlaskParser):
    # webargs answers 422 by default; this API has always answered a wrong field with 400 naming it.
    DEFAULT_VALIDATION_STATUS = 400


class ApiBlueprint(SmorestBlueprint):
    """A blueprint of JSON routes whose schemas go into the OpenAPI document."""

    ARGUMENTS_PARSER = _Parser()


class ErrorSchema(ma.Schema):
    """Every error answer of the API: a sentence, and for a refused request the messages per field."""

    error = ma.fields.String(required=True, metadata={"description": "What went wrong, in a sentence."})
    errors = ma.fields.Dict(metadata={"description": "Per location and field, the messages (a refused request)."})


class FractureApi(Api):
    ERROR_SCHEMA = ErrorSchema


def no_auth() -> dict[str, Any]:
    """`@bp.doc(**no_auth())`: an operation anyone may call."""
    return {"security": []}


def init_api(app: Flask) -> FractureApi:
    """Bind the API description to `app`; resource packages register their ApiBlueprints on what this returns."""
    app.config.update(
        API_TITLE="Fracture API",
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": (
                "Classify batches of bone X-rays as fractured / not fractured, read and review the results, "
                "and retrain, evaluate and promote the model. Authenticate with `Authorization: Bearer <token>` "
                "(`fracture users create NAME` prints one); a logged-in browser session works too. "
                "Errors are JSON: {\"error\": sentence}.")},
            "security": [{BEARER: []}],
            "components": {"securitySchemes": {BEARER: {"type": "http", "scheme": "bearer"}}},
        },
    )
    api = FractureApi(app)
    app.register_blueprint(_docs_blueprint())
    return api


def _docs_blueprint() -> Blueprint:
    from swagger_ui_bundle import swagger_ui_path

    bp = Blueprint("docs", __name__, static_folder=swagger_ui_path, static_url_path="/api/docs/assets")

    @bp.get("/api/docs")
    def page() -> str:
        """The API reference: Swagger UI over /api/openapi.json."""
        return render_template("api_docs.html")

    return bp




def one_of(choices: Sequence[str], error: str | None = None) -> OneOf:
    """A field's allowed values; refused as "<field> must be one of: a, b" (the field's name goes before it)."""
    shown = [c for c in choices if c]
    return OneOf(list(choices), error=error or f"must be one of: {', '.join(shown)}")


def row_id(**kwargs: Any) -> ma.fields.Integer:
    """A field naming a row by its id: a whole number from 1 to MAX_ROW_ID (a bigger one names no row)."""
    return ma.fields.Integer(strict=True, validate=Range(1, MAX_ROW_ID), **kwargs)


def not_sent(exc: BrokerUnavailable, body: dict[str, Any] | None = None) -> tuple[Response, int]:
    """503 for a row recorded but not sent (the broker is down): the row's id and status, or `body`, and why.

    A Response, not a dict: flask-smorest would dump a returned dict with the operation's 2xx schema."""
    row = exc.subject
    shown = body if body is not None else {"id": getattr(row, "id", None), "status": getattr(row, "status", None)}
    return jsonify({**shown, "error": str(exc)}), 503
