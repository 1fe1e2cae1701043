"""The evaluations' page routes: the models page's "evaluate on" form and the evaluations' plots."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fracture.evaluations import EvaluationError
from fracture.models import Evaluation
from fracture.queue import BrokerUnavailable
from web.auth import require_admin
from web.context import db, send_stored_png
from web.evaluations.service import start
from web.models.actions import get_version

bp = Blueprint("evaluations", __name__)


@bp.post("/models/<int:version_id>/evaluate")
def evaluate_form(version_id: int) -> ResponseReturnValue:
    """The models page's form: evaluate this version on a ready dataset, then back to the page."""
    require_admin("start an evaluation")
    version = get_version(version_id)
    back = redirect(url_for("models.index", _anchor=f"model-{version_id}"))
    dataset_id = request.form.get("dataset_id", type=int)
    if dataset_id is None:
        flash("Choose a dataset to evaluate on.", "error")
        return back
    try:
        evaluation = start(version.id, dataset_id, request.form.get("split") or None,
                           request.form.get("audit") == "on")
    except EvaluationError as e:
        flash(f"Cannot evaluate: {e}.", "error")
        return back
    except BrokerUnavailable:
        flash("The task queue is unavailable; the evaluation was not started.", "error")
        return back
    flash(f"Evaluation #{evaluation.id} of {version.name} queued.", "ok")
    return back


@bp.get("/evaluations/<int:evaluation_id>/plots/<name>")
def plot(evaluation_id: int, name: str) -> ResponseReturnValue:
    """Serve a plot by the storage key recorded on the evaluation row, never a path taken from the URL."""
    evaluation = db().get(Evaluation, evaluation_id)
    return send_stored_png((evaluation.plots or {}).get(name) if evaluation else None)
