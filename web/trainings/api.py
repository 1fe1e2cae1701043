"""The trainings API: start a run on training datasets with a recipe (admins), follow it, read its log, cancel it."""

from __future__ import annotations

from typing import Any

from flask import Response, abort
from sqlalchemy import select

from fracture import datasets
from fracture.models import FINAL_RUN_STATUSES, TrainingRun
from fracture.queue import BrokerUnavailable
from fracture.schedule_params import RecipeError
from web.auth import current_user, require_admin
from web.context import db
from web.openapi import ApiBlueprint, not_sent
from web.trainings import schemas as s
from web.trainings.service import NO_READY_DATASET, cancel, get_run, log_text, start

bp = ApiBlueprint("trainings_api", __name__, url_prefix="/api", description="Training runs.")


@bp.post("/trainings")
@bp.arguments(s.StartBody)
@bp.response(201, s.RunStartedSchema)
@bp.alt_response(503, schema=s.RunNotSentSchema, description="Recorded and failed: the broker is down.")
def api_start(body: dict[str, Any]) -> tuple[object, int]:
    """Train on `dataset_ids` with the recipe's defaults, changed by the fields given."""
    require_admin("start a training run")
    if not body.get("dataset_ids") and not datasets.ready_training_datasets(db()):
        abort(409, description=f"Cannot train: {NO_READY_DATASET}.")  # nothing could be named: say what to do
    try:
        run = start(body, f"requested through the API by {current_user().username}")
    except RecipeError as e:
        db().rollback()
        abort(400, description=f"Cannot train: {e}.")
    except BrokerUnavailable as e:
        return not_sent(e)
    return run, 201


@bp.get("/trainings")
@bp.response(200, s.RunListSchema)
def api_list() -> dict[str, Any]:
    """The latest 100 runs, newest first."""
    return {"trainings": db().scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(100)).all()}


@bp.get("/trainings/<int:run_id>")
@bp.response(200, s.RunSchema)
def api_get(run_id: int) -> TrainingRun:
    """One run: status, progress, curves, ETA, datasets and recipe."""
    return get_run(run_id)


@bp.post("/trainings/<int:run_id>/cancel")
@bp.response(202, s.RunSchema, description="Stops after its current epoch.")
@bp.alt_response(200, schema=s.RunSchema, description="Stopped (a queued run stops at once).")
def api_cancel(run_id: int) -> tuple[TrainingRun, int]:
    """Stop a run: a queued one at once, a running one after its current epoch (202 until then)."""
    run = cancel(run_id)
    return run, 200 if run.status in FINAL_RUN_STATUSES else 202


@bp.get("/trainings/<int:run_id>/log")
@bp.doc(responses={"200": {"description": "Plain text.", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def api_log(run_id: int) -> Response:
    """The run's log as plain text (its last 256 KiB)."""
    return Response(log_text(get_run(run_id)), mimetype="text/plain")
