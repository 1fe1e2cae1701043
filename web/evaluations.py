"""Evaluations: measure a model version on a registered dataset (API and the models page's form), read them back.

Admins start them; everyone signed in reads them. The row is committed first, then `evaluations.run` is sent by
name to the trainer's queue; with the broker down the row is failed with that reason and the answer is 503.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import evaluations, queue
from fracture.evaluations import DatasetNotReady, EvaluationError
from fracture.models import Dataset, Evaluation, ModelVersion
from web.auth import require_admin
from web.context import celery, db, send_stored_png
from web.views import evaluation_dict

bp = Blueprint("evaluations", __name__)


class NotSent(RuntimeError):
    """The evaluation was recorded but the broker was down: it is failed with that reason."""

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__(evaluations.BROKER_DOWN)
        self.evaluation = evaluation


def start(version_id: int, dataset_id: int, split: str | None, audit: bool = False) -> Evaluation:
    """Record a queued evaluation, commit, and send it to the trainer; EvaluationError or NotSent otherwise."""
    session = db()
    evaluation = evaluations.create_evaluation(session, version_id, dataset_id, split, audit)
    session.commit()
    try:
        queue.send_trainer_task(celery(), queue.EVALUATE_TASK, evaluation.id)
    except queue.BrokerUnavailable:
        evaluations.fail_evaluation(session, evaluation.id, evaluations.BROKER_DOWN)
        session.commit()
        raise NotSent(evaluation) from None
    return evaluation


def find_version(ref: object) -> ModelVersion:
    """A version by its name ("release-1") or its id (a number, or digits); 404 when there is none."""
    session = db()
    version = None
    if isinstance(ref, str) and ref.strip():
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == ref.strip())).first()
        if version is None and ref.strip().isdigit():
            version = session.get(ModelVersion, int(ref))
    elif isinstance(ref, int) and not isinstance(ref, bool):
        version = session.get(ModelVersion, ref)
    else:
        abort(400, description="Give model_version: a model version's name (for example release-1) or its id.")
    if version is None:
        abort(404, description=f"There is no model version named or numbered {ref!r}.")
    return version


def _dataset_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    abort(400, description="Give dataset_id: the id of a registered, validated dataset.")


def _split(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        abort(400, description="split must be train, val or test (or left out for the whole dataset).")
    return value


def _audit(value: object) -> bool:
    if value is None or value in ("", "0", "false", "off"):
        return False
    if value is True or value is False:
        return value
    if value in ("1", "true", "on"):
        return True
    abort(400, description="audit must be true or false (true also runs the robustness audit).")


def _as_dict(evaluation: Evaluation) -> dict[str, Any]:
    session = db()
    version = session.get_one(ModelVersion, evaluation.model_version_id)
    dataset = session.get_one(Dataset, evaluation.dataset_id)
    return evaluation_dict(evaluation, version.name, dataset.name)


# ---------------------------------------------------------------- the API


@bp.post("/api/evaluations")
def post_evaluation() -> tuple[Response, int]:
    """Evaluate `model_version` on `dataset_id` (all of it, or `split`; with `audit`, also under the robustness
    audit's acquisition changes): {"id", "status"}."""
    require_admin("start an evaluation")
    body = request.get_json(silent=True)
    body = body if isinstance(body, dict) else request.form.to_dict()
    version = find_version(body.get("model_version"))
    dataset_id = _dataset_id(body.get("dataset_id"))
    if db().get(Dataset, dataset_id) is None:
        abort(404, description=f"There is no dataset with id {dataset_id}.")
    try:
        evaluation = start(version.id, dataset_id, _split(body.get("split")), _audit(body.get("audit")))
    except DatasetNotReady as e:
        abort(409, description=f"Cannot evaluate: {e}.")
    except EvaluationError as e:
        abort(400, description=f"Cannot evaluate: {e}.")
    except NotSent as e:
        return jsonify({"id": e.evaluation.id, "status": e.evaluation.status, "error": str(e)}), 503
    return jsonify({"id": evaluation.id, "status": evaluation.status}), 201


@bp.get("/api/evaluations")
def list_evaluations() -> Response:
    """Every evaluation (of `model_version` if given), newest first."""
    ref = request.args.get("model_version")
    version_id = find_version(ref).id if ref else None
    rows = evaluations.evaluations_with_names(db(), version_id)
    return jsonify({"evaluations": [evaluation_dict(e, v, d) for e, v, d in rows]})


@bp.get("/api/evaluations/<int:evaluation_id>")
def get_evaluation(evaluation_id: int) -> Response:
    evaluation = db().get(Evaluation, evaluation_id)
    if evaluation is None:
        abort(404, description=f"There is no evaluation with id {evaluation_id}.")
    return jsonify(_as_dict(evaluation))


# ---------------------------------------------------------------- the models page


@bp.post("/models/<int:version_id>/evaluate")
def evaluate_form(version_id: int) -> ResponseReturnValue:
    """The models page's form: evaluate this version on a ready dataset, then back to the page."""
    require_admin("start an evaluation")
    version = find_version(version_id)
    back = redirect(url_for("pages.models", _anchor=f"model-{version_id}"))
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
    except NotSent:
        flash("The task queue is unavailable; the evaluation was not started.", "error")
        return back
    flash(f"Evaluation #{evaluation.id} of {version.name} queued.", "ok")
    return back


@bp.get("/evaluations/<int:evaluation_id>/plots/<name>")
def plot(evaluation_id: int, name: str) -> ResponseReturnValue:
    """Serve a plot by the storage key recorded on the evaluation row, never a path taken from the URL."""
    evaluation = db().get(Evaluation, evaluation_id)
    return send_stored_png((evaluation.plots or {}).get(name) if evaluation else None)
