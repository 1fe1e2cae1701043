"""Trainings: start a run on training datasets with a recipe, follow it (progress, curve, log), cancel it.

Admins start and cancel; everyone signed in follows. The run is committed first, then `training.retrain` is sent
by name; with the broker down the run is failed with that reason and the answer is 503.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import queue, trainings, val_auc
from fracture.models import FINAL_RUN_STATUSES, Dataset, DatasetRole, DatasetStatus, ModelVersion, TrainingRun
from fracture.recipe import AUGMENTATIONS, INTENSITIES, RECIPE, VIEWS, recipe_of
from fracture.schedule_params import RecipeError, check_params
from fracture.storage import StorageError
from web.auth import current_user, require_admin
from web.context import celery, db, settings, storage
from web.views import aware, iso

bp = Blueprint("trainings", __name__)
LOG_TAIL_BYTES = 256 * 1024  # the log the page and the API show: its end
NO_READY_DATASET = ("no training dataset is ready: upload a zip or register a folder on the Datasets page "
                    "(POST /api/datasets), let it validate, then name it in dataset_ids")


class NotSent(RuntimeError):
    """The run was recorded but the broker was down: it is failed with that reason."""

    def __init__(self, run: TrainingRun) -> None:
        super().__init__("The task queue is unavailable; the training run was not started.")
        self.run = run


# ---------------------------------------------------------------- actions shared by pages and API


def start(body: dict[str, Any], message: str) -> TrainingRun:
    """Check the datasets and recipe, record a queued run, commit, send it; RecipeError or NotSent otherwise."""
    session = db()
    checked = check_params(session, body)
    params = {**recipe_of(checked), "dataset_ids": checked["dataset_ids"]}
    if body.get("dry_run") in (True, "on", "1", "true"):
        params["dry_run"] = True  # a quick check: one epoch on at most 64 images per split
    run = trainings.create_run(session, params, message)
    session.commit()
    send_run(run)
    return run


def send_run(run: TrainingRun) -> None:
    """Send a committed run to the trainer's queue; if the broker is down, fail the run with why and raise NotSent."""
    try:
        queue.send_retrain(celery(), run.id)
    except queue.BrokerUnavailable:
        trainings.fail_run(db(), run.id, trainings.BROKER_DOWN)
        db().commit()
        raise NotSent(run) from None


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


def _finite(values: list[Any]) -> list[float | None]:
    return [float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in values]


def run_dict(run: TrainingRun, now: datetime | None = None) -> dict[str, Any]:
    """The shape of `GET /api/trainings/<id>`: status, progress, curves, elapsed and ETA, datasets, recipe."""
    now = now or datetime.now(UTC)
    session = db()
    history = {k: _finite(v) for k, v in (run.history or {}).items() if isinstance(v, list)}
    started, finished = aware(run.started_at), aware(run.finished_at)
    elapsed = ((finished or now) - started).total_seconds() if started else None
    done_s = [s for s in history.get("epoch_s", [])[-run.epoch:] if s is not None] if run.epoch else []
    eta = None
    if run.status in FINAL_RUN_STATUSES:
        eta = 0.0
    elif done_s and run.epochs:
        eta = round(sum(done_s) / len(done_s) * max(run.epochs - run.epoch, 0), 1)
    params = dict(run.params or {})
    ids = params.get("dataset_ids") or []
    names = {d.id: d.name for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))} if ids else {}
    version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    aucs = history.get("val_auc") or [None]
    views = (version.metrics or {}).get("served_views") if version else None
    return {
        "id": run.id, "status": run.status, "epoch": run.epoch, "epochs": run.epochs,
        # The run's one headline figure: its registered version's val ROC-AUC (None until it registers one) ...
        "val_auc": version.selection_metric if version else None,
        "val_auc_measures": val_auc.served_measures(views),
        # ... and the per-epoch figure that picked the epoch (history["val_auc"] is its curve).
        "selection_val_auc": aucs[-1], "selection_val_auc_measures": val_auc.SELECTION_MEASURES,
        "train_loss": (history.get("train_loss") or [None])[-1],
        "eta_s": eta, "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
        "model_version": version.name if version else None, "error": run.error, "message": run.message,
        "history": history, "datasets": [{"id": i, "name": names.get(i)} for i in ids],
        "recipe": recipe_of(params) | ({"dry_run": True} if params.get("dry_run") else {}),
        "cancel_requested": bool(run.cancel_requested), "final": run.status in FINAL_RUN_STATUSES,
        "schedule_id": run.schedule_id, "created_at": iso(run.created_at), "started_at": iso(started),
        "finished_at": iso(finished), "log_url": url_for("trainings.api_log", run_id=run.id),
        "page_url": url_for("trainings.page", run_id=run.id),
    }


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


def _get(run_id: int) -> TrainingRun:
    run = db().get(TrainingRun, run_id)
    if run is None:
        abort(404, description=f"There is no training run {run_id}.")
    return run


@bp.app_template_global()
def served_val_auc(auc: float | None, views: str | None) -> str:
    """A version's val ROC-AUC with what it measures (fracture.val_auc), as the run page and the card say it."""
    return val_auc.served_text(auc, views)


@bp.app_template_global()
def default_dataset_problem() -> str | None:
    """Why "Retrain now" (a run on FRACTURE_DATASET) cannot work here, or None: the page offers it only when None."""
    return trainings.default_dataset_problem(settings().dataset_dir)


@bp.app_template_global()
def training_choices() -> dict[str, Any]:
    """What the training page's start form offers: the ready training datasets and the recipe's defaults."""
    rows = db().scalars(select(Dataset).where(Dataset.status == DatasetStatus.READY,
                                              Dataset.role == DatasetRole.TRAINING).order_by(Dataset.name)).all()
    return {"datasets": rows, "recipe": RECIPE, "views": VIEWS, "augmentations": AUGMENTATIONS,
            "intensities": INTENSITIES}


# ---------------------------------------------------------------- the API


@bp.post("/api/trainings")
def api_start() -> tuple[Response, int]:
    """{"dataset_ids": [...], "epochs"?, "width"?, "image_size"?, "views"?, "seed"?, "augment"?,
    "intensity"?} -> {"id", "status"}."""
    require_admin("start a training run")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='Send {"dataset_ids": [...], and the recipe fields to change} as JSON.')
    if not body.get("dataset_ids") and not training_choices()["datasets"]:
        abort(409, description=f"Cannot train: {NO_READY_DATASET}.")  # nothing could be named: say what to do
    try:
        run = start(body, f"requested through the API by {current_user().username}")
    except RecipeError as e:
        db().rollback()
        abort(400, description=f"Cannot train: {e}.")
    except NotSent as e:
        return jsonify({"id": e.run.id, "status": e.run.status, "error": str(e)}), 503
    return jsonify({"id": run.id, "status": run.status}), 201


@bp.get("/api/trainings")
def api_list() -> Response:
    """The latest 100 runs, newest first."""
    rows = db().scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(100)).all()
    return jsonify({"trainings": [run_dict(r) for r in rows]})


@bp.get("/api/trainings/<int:run_id>")
def api_get(run_id: int) -> Response:
    return jsonify(run_dict(_get(run_id)))


@bp.post("/api/trainings/<int:run_id>/cancel")
def api_cancel(run_id: int) -> tuple[Response, int]:
    """Stop a run: a queued one at once, a running one after its current epoch (202 until then)."""
    run = cancel(run_id)
    return jsonify(run_dict(run)), 200 if run.status in FINAL_RUN_STATUSES else 202


@bp.get("/api/trainings/<int:run_id>/log")
def api_log(run_id: int) -> Response:
    """The run's log as plain text (its last 256 KiB)."""
    return Response(log_text(_get(run_id)), mimetype="text/plain")


# ---------------------------------------------------------------- pages


@bp.post("/training/start")
def start_form() -> ResponseReturnValue:
    """The training page's form: checked datasets and the recipe fields, then the run's page."""
    require_admin("start a training run")
    body: dict[str, Any] = {k: v for k, v in request.form.items() if k in RECIPE or k == "dry_run"}
    body["dataset_ids"] = request.form.getlist("dataset_ids")
    try:
        run = start(body, f"requested on the training page by {current_user().username}")
    except RecipeError as e:
        db().rollback()
        flash(f"Cannot train: {e}.", "error")
        return redirect(url_for("pages.training"))
    except NotSent as e:
        flash(str(e), "error")
        return redirect(url_for("trainings.page", run_id=e.run.id))
    flash(f"Training run #{run.id} queued.", "ok")
    return redirect(url_for("trainings.page", run_id=run.id))


@bp.get("/training/<int:run_id>")
def page(run_id: int) -> ResponseReturnValue:
    run = _get(run_id)
    return render_template("training_run.html", run=run_dict(run), log=log_text(run))


@bp.post("/training/<int:run_id>/cancel")
def cancel_form(run_id: int) -> ResponseReturnValue:
    run = cancel(run_id)
    flash(f"Training run #{run.id} cancelled." if run.status in FINAL_RUN_STATUSES
          else f"Training run #{run.id} stops after its current epoch.", "ok")
    return redirect(url_for("trainings.page", run_id=run_id))
