"""The models API: every version, two side by side, and the admins' promote, retire and roll back."""

from __future__ import annotations

from typing import Any

from flask import abort

from fracture.models import ModelVersion
from fracture.registry import RegistryError, newest_first
from web.auth import require_admin
from web.context import active_model, db
from web.models import schemas as s
from web.models.actions import compared_pair, comparison, get_version, promote_version, retire_version, rollback_active
from web.openapi import ApiBlueprint

bp = ApiBlueprint("models_api", __name__, url_prefix="/api", description="Model versions: metrics, plots, promotion.")


@bp.get("/models")
@bp.response(200, s.ModelListSchema)
def list_models() -> dict[str, Any]:
    """Every model version, newest first, and the active one's name."""
    active = active_model()
    return {"active": active.name if active else None, "models": newest_first(db())}


@bp.post("/models/<ref>/promote")
@bp.response(200, s.ModelSchema)
def promote_api(ref: str) -> ModelVersion:
    """Make a version (name or id) the active model (admins only); new jobs use it, accepted jobs keep theirs."""
    require_admin("promote a model")
    return promote_version(ref)


@bp.post("/models/<ref>/retire")
@bp.response(200, s.ModelSchema)
def retire_api(ref: str) -> ModelVersion:
    """Retire a version that is not active (admins only): 409 for the active one."""
    require_admin("retire a model")
    version = get_version(ref)
    try:
        retire_version(version)
    except RegistryError as e:
        abort(409, description=f"Cannot retire: {e}.")
    return version


@bp.post("/models/rollback")
@bp.arguments(s.RollbackBody, required=False)
@bp.response(200, s.RollbackSchema)
def rollback_api(body: dict[str, Any]) -> dict[str, Any]:
    """Make the version active before the current one active again (admins only).

    409 when there is none. A rollback after a rollback goes further back, never back to the version it replaced.
    With `to`, it is refused with 409 unless the rollback would go to that version.
    """
    require_admin("roll back the active model")
    to = (body or {}).get("to")
    try:
        target, replaced = rollback_active(to=str(to) if to else None)
    except RegistryError as e:
        abort(409, description=f"Cannot roll back: {e}.")
    return {"active": target, "replaced": replaced}


@bp.get("/models/compare")
@bp.arguments(s.CompareQuery, location="query")
@bp.response(200, s.ComparisonSchema)
def compare_api(args: dict[str, Any]) -> dict[str, Any]:
    """Two versions side by side (default: the active one and the newest other)."""
    del args  # read by compared_pair, which the page shares
    a, b = compared_pair()
    return comparison(a, b)
