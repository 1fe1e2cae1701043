"""The models pages: every version with its metrics and plots, two side by side, and the admins' forms to promote,
retire and roll back (each asks first, web/confirm.py; a form sent twice or from an out-of-date page changes nothing).
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture.evaluations import SPLIT_CHOICES
from fracture.models import Dataset, DatasetStatus, ModelStatus, ModelVersion
from fracture.registry import RegistryError, active_version, newest_first
from web.auth import current_user, require_admin
from web.confirm import asked, confirm_page
from web.context import active_model, db, send_stored_png
from web.models.actions import (
    compared_pair,
    comparison,
    get_version,
    model_actions,
    out_of_date,
    promote_action,
    promote_version,
    retire_action,
    retire_version,
    rollback_action,
    rollback_active,
)
from web.models.schemas import model_page_row

bp = Blueprint("models", __name__)


@bp.get("/models")
def index() -> ResponseReturnValue:
    active_model()  # registers the shipped release model on a fresh install, before the list is read
    versions = newest_first(db())
    ready = db().scalars(select(Dataset).where(Dataset.status == DatasetStatus.READY).order_by(Dataset.name)).all()
    actions = model_actions(versions) if current_user().is_admin else None
    return render_template("models.html", models=[model_page_row(v) for v in versions], datasets=ready,
                           splits=SPLIT_CHOICES, actions=actions)


@bp.get("/models/<int:version_id>/plots/<name>")
def plot(version_id: int, name: str) -> ResponseReturnValue:
    """Serve a plot by the storage key recorded on the version row, never a path taken from the URL."""
    version = db().get(ModelVersion, version_id)
    return send_stored_png((version.plots or {}).get(name) if version else None)


@bp.get("/models/compare")
def compare_page() -> ResponseReturnValue:
    a, b = compared_pair()
    versions = db().scalars(select(ModelVersion.name).order_by(ModelVersion.created_at.desc())).all()
    return render_template("model_compare.html", c=comparison(a, b), versions=versions)


@bp.post("/models/<ref>/promote")
def promote_page(ref: str) -> ResponseReturnValue:
    require_admin("promote a model")
    version = get_version(ref)
    if version.status == ModelStatus.ACTIVE:
        flash(f"Model {version.name} is already the active model; nothing changed.", "ok")
        return redirect(url_for("models.index"))
    stale = out_of_date()
    if stale:
        flash(f"Nothing was changed: {stale}.", "error")
        return redirect(url_for("models.index"))
    if asked():
        action = promote_action(version, active_version(db()))
        return confirm_page(action.question, action.label, url_for("models.index", _anchor=f"model-{version.id}"))
    promote_version(version.id)
    flash(f"Model {version.name} is now the active model; new jobs use it.", "ok")
    return redirect(url_for("models.index"))


@bp.post("/models/<ref>/retire")
def retire_page(ref: str) -> ResponseReturnValue:
    require_admin("retire a model")
    version = get_version(ref)
    if asked() and version.status == ModelStatus.CANDIDATE:
        action = retire_action(version)
        return confirm_page(action.question, action.label, url_for("models.index", _anchor=f"model-{version.id}"))
    if version.status == ModelStatus.RETIRED:
        flash(f"Model {version.name} is already retired; nothing changed.", "ok")
        return redirect(url_for("models.index"))
    try:
        retire_version(version)
    except RegistryError as e:
        flash(f"Cannot retire: {e}.", "error")
        return redirect(url_for("models.index", _anchor=f"model-{version.id}"))
    flash(f"Model {version.name} is retired.", "ok")
    return redirect(url_for("models.index"))


@bp.post("/models/rollback")
def rollback_page() -> ResponseReturnValue:
    require_admin("roll back the active model")
    stale = out_of_date()
    if stale:
        flash(f"Nothing was rolled back: {stale}.", "error")
        return redirect(url_for("models.index"))
    if asked():
        action = rollback_action()
        if action is not None:
            return confirm_page(action.question, action.label, url_for("models.index"))
    try:
        target, replaced = rollback_active(to=request.form.get("to") or None)
    except RegistryError as e:
        flash(f"Cannot roll back: {e}.", "error")
        return redirect(url_for("models.index"))
    flash(f"Rolled back: {target.name} is active again" + (f"; {replaced.name} is retired." if replaced else "."),
          "ok")
    return redirect(url_for("models.index"))
