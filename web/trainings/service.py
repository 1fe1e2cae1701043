"""Start, send and cancel training runs, and read a run's log: what the trainings pages and API share.

The run is committed first, then `training.retrain` is sent by name; with the broker down the run is failed with
that reason (BrokerUnavailable, whose subject is the run).
"""

from __future__ import annotations

from typing import Any

from flask import abort

from fracture import queue, trainings
from fracture.models import TrainingRun
from fracture.recipe import recipe_of
from fracture.schedule_params import check_params
from fracture.storage import StorageError
from web.auth import require_admin
from web.context import celery, db, storage

LOG_TAIL_BYTES = 256 * 1024  # the log the page and the API show: its end
NO_READY_DATASET = ("no training dataset is ready: upload a zip or register a folder on the Datasets page "
                    "(POST /api/datasets), let it validate, then name it in dataset_ids")


NOT_STARTED = "The task queue is unavailable; the training run was not started."


def start(body: dict[str, Any], message: str) -> TrainingRun:
    """Check the datasets and recipe, record a queued run, commit, send it; RecipeError or BrokerUnavailable."""
    session = db()
    checked = check_params(session, body)
    params = {**recipe_of(checked), "dataset_ids": checked["dataset_ids"]}
    if "start_from" in checked:  # a registered version's weights, fine-tuned (the trainer's --init)
        params["start_from"] = checked["start_from"]
    if body.get("dry_run") in (True, "on", "1", "true"):
        params["dry_run"] = True  # a quick check: one epoch on at most 64 images per split
    run = trainings.create_run(session, params, message)
    session.commit()
    send_run(run)
    return run


def send_run(run: TrainingRun) -> None:
    """Send a committed run to the trainer's queue; if the broker is down, fail the run with why and raise
    BrokerUnavailable (its subject: the run)."""

    def fail() -> None:
        trainings.fail_run(db(), run.id, trainings.BROKER_DOWN)
        db().commit()

    queue.send_or_mark(lambda: queue.send_retrain(celery(), run.id), fail, run, NOT_STARTED)


def cancel(run_id: int) -> TrainingRun:
    """Ask run `run_id` to stop (404 if there is none, 409 if it already ended)."""
    require_admin("cancel a training run")
    session = db()
    try:
        run = trainings.request_cancel(session, run_id)
    except LookupError:
        abort(404, description=f"There is no training run {run_id}.")
    except ValueError as e:
        abort(409, description=f"Cannot cancel: {e}.")
    session.commit()
    # Read again after the commit: the epoch read before it may be one the trainer has since finished, and the
    # run stops at most one epoch after the one this reply reports.
    session.refresh(run)
    return run


def log_text(run: TrainingRun) -> str:
    """The end of the run's log ("" while it has none)."""
    if not run.log_key:
        return ""
    try:
        path = storage().path(run.log_key)
    except StorageError:
        return ""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - LOG_TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def get_run(run_id: int) -> TrainingRun:
    run = db().get(TrainingRun, run_id)
    if run is None:
        abort(404, description=f"There is no training run {run_id}.")
    return run
