"""The training pages: the runs with the start form and the schedules, one run (progress, curve, log), and the
admins' forms to start, retrain on FRACTURE_DATASET and cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from fracture import datasets, trainings
from fracture.models import FINAL_RUN_STATUSES, ModelVersion, TrainingRun
from fracture.queue import BrokerUnavailable
from fracture.recipe import (
    AUGMENTATIONS,
    BOX_WEIGHTS,
    FRAMINGS,
    INTENSITIES,
    OUTPUT_STRIDES,
    POOLINGS,
    RECIPE,
    VIEWS,
)
from fracture.registry import newest_first
from fracture.schedule_params import RecipeError
from web.auth import current_user, require_admin
from web.context import db, settings
from web.schedules.pages import section as schedules_section
from web.trainings.schemas import run_json
from web.trainings.service import cancel, get_run, log_text, send_run, start

bp = Blueprint("trainings", __name__)


def _start_form_choices() -> dict[str, Any]:
    """What the start form offers: the ready training datasets, the recipe's defaults and the versions to start from."""
    return {"datasets": datasets.ready_training_datasets(db()), "recipe": RECIPE, "views": VIEWS,
            "versions": newest_first(db()),
            "augmentations": AUGMENTATIONS, "intensities": INTENSITIES, "framings": FRAMINGS,
            "output_strides": OUTPUT_STRIDES, "poolings": POOLINGS, "box_weights": BOX_WEIGHTS}


@bp.get("/training")
def index() -> ResponseReturnValue:
    session = db()
    runs = session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(50)).all()
    names = {row.id: row.name for row in session.execute(select(ModelVersion.id, ModelVersion.name))}
    count = session.scalar(select(func.count(TrainingRun.id)))
    choices = _start_form_choices()
    return render_template("training.html", runs=runs, names=names, count=count, choices=choices,
                           ready_count=len(choices["datasets"]),
                           retrain_problem=trainings.default_dataset_problem(settings().dataset_dir),
                           schedules=schedules_section())


@bp.post("/training/retrain")
def retrain() -> ResponseReturnValue:
    """Record a training run on FRACTURE_DATASET, then send `training.retrain` by name to the training queue."""
    require_admin("start a training run")
    problem = trainings.default_dataset_problem(settings().dataset_dir)
    if problem:  # refused before a run is recorded: it could only fail
        abort(409, description=f"Cannot retrain: {problem}.")
    session = db()
    run = trainings.create_run(session, {}, "requested on the training page")
    session.commit()
    try:
        send_run(run)
    except BrokerUnavailable:
        flash("The task queue is unavailable; the run was not started.", "error")
        return redirect(url_for("trainings.index"))
    flash(f"Training run #{run.id} queued.", "ok")
    return redirect(url_for("trainings.index"))


@bp.post("/training/start")
def start_form() -> ResponseReturnValue:
    """The training page's form: checked datasets and the recipe fields, then the run's page."""
    require_admin("start a training run")
    body: dict[str, Any] = {k: v for k, v in request.form.items() if k in RECIPE or k in ("dry_run", "start_from")}
    body["dataset_ids"] = request.form.getlist("dataset_ids")
    try:
        run = start(body, f"requested on the training page by {current_user().username}")
    except RecipeError as e:
        db().rollback()
        flash(f"Cannot train: {e}.", "error")
        return redirect(url_for("trainings.index"))
    except BrokerUnavailable as e:
        flash(str(e), "error")
        return redirect(url_for("trainings.page", run_id=getattr(e.subject, "id", None)))
    flash(f"Training run #{run.id} queued.", "ok")
    return redirect(url_for("trainings.page", run_id=run.id))


@bp.get("/training/<int:run_id>")
def page(run_id: int) -> ResponseReturnValue:
    run = get_run(run_id)
    return render_template("training_run.html", run=run_json(run), log=log_text(run))


@bp.post("/training/<int:run_id>/cancel")
def cancel_form(run_id: int) -> ResponseReturnValue:
    run = cancel(run_id)
    flash(f"Training run #{run.id} cancelled." if run.status in FINAL_RUN_STATUSES
          else f"Training run #{run.id} stops after its current epoch.", "ok")
    return redirect(url_for("trainings.page", run_id=run_id))
