"""The evaluations API: measure a model version on a registered dataset (admins), read the results back."""

from __future__ import annotations

from typing import Any

from flask import abort

from fracture import evaluations
from fracture.evaluations import DatasetNotReady, EvaluationError
from fracture.models import Dataset, Evaluation, ModelVersion
from fracture.queue import BrokerUnavailable
from web.auth import require_admin
from web.context import db
from web.evaluations import schemas as s
from web.evaluations.service import start
from web.models.actions import get_version
from web.openapi import ApiBlueprint, not_sent

bp = ApiBlueprint("evaluations_api", __name__, url_prefix="/api",
                  description="A model version measured on a registered dataset.")


@bp.post("/evaluations")
@bp.arguments(s.EvaluationBody)
@bp.response(201, s.EvaluationStartedSchema)
@bp.alt_response(503, schema=s.EvaluationNotSentSchema, description="Recorded and failed: the broker is down.")
def post_evaluation(body: dict[str, Any]) -> tuple[object, int]:
    """Evaluate `model_version` on `dataset_id` (all of it, or `split`; with `audit`, also under the robustness
    audit's acquisition changes)."""
    require_admin("start an evaluation")
    version = get_version(body["model_version"])
    dataset_id = body["dataset_id"]
    if db().get(Dataset, dataset_id) is None:
        abort(404, description=f"There is no dataset with id {dataset_id}.")
    try:
        evaluation = start(version.id, dataset_id, body.get("split") or None, body["audit"])
    except DatasetNotReady as e:
        abort(409, description=f"Cannot evaluate: {e}.")
    except EvaluationError as e:
        abort(400, description=f"Cannot evaluate: {e}.")
    except BrokerUnavailable as e:
        return not_sent(e)
    return evaluation, 201


@bp.get("/evaluations")
@bp.arguments(s.EvaluationListQuery, location="query")
@bp.response(200, s.EvaluationListSchema)
def list_evaluations(args: dict[str, Any]) -> dict[str, Any]:
    """Every evaluation (of `model_version` if given), newest first."""
    ref = args.get("model_version")
    version_id = get_version(ref).id if ref else None
    return {"evaluations": list(evaluations.evaluations_with_names(db(), version_id))}


@bp.get("/evaluations/<int:evaluation_id>")
@bp.response(200, s.EvaluationSchema)
def get_evaluation(evaluation_id: int) -> list[object]:
    """One evaluation: its status, figures and plots."""
    session = db()
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        abort(404, description=f"There is no evaluation with id {evaluation_id}.")
    version = session.get_one(ModelVersion, evaluation.model_version_id)
    dataset = session.get_one(Dataset, evaluation.dataset_id)
    return [evaluation, version.name, dataset.name]  # a list: flask-smorest reads a tuple as (body, status)
