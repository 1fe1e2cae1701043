"""Server-rendered pages: upload, jobs, one job, models (with plots) and training."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_from_directory, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from fracture import trainings
from fracture.evaluations import SPLIT_CHOICES
from fracture.models import Dataset, DatasetStatus, Job, ModelVersion, TrainingRun
from web.auth import current_user, require_admin, sees, visible
from web.context import NO_MODEL_MESSAGE, active_model, db, send_stored_png, settings
from web.models import model_actions
from web.trainings import NotSent, send_run
from web.views import RowQuery, count_rows, job_dict, job_summary, model_dict, parse_row_query, result_rows

bp = Blueprint("pages", __name__)


@bp.get("/favicon.ico")
def favicon() -> ResponseReturnValue:
    """The site's icon where browsers look for it without being told (the pages link the SVG in /static)."""
    static = current_app.static_folder or "static"
    return send_from_directory(static, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)


@bp.get("/")
def upload() -> ResponseReturnValue:
    model = active_model()
    return render_template(
        "upload.html", model=model, no_model_message=NO_MODEL_MESSAGE,
        max_bytes=current_app.config["MAX_CONTENT_LENGTH"], max_files=settings().max_files_per_job,
    )


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    rows = db().scalars(visible(select(Job)).order_by(Job.created_at.desc()).limit(200))
    return render_template("jobs.html", jobs=[job_dict(j) for j in rows])


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    """The job as a reading list: its summary and histogram, then its rows, filtered and sorted as asked."""
    record = db().get(Job, job_id)
    if record is None or not sees(record):
        abort(404, description=f"There is no job with id {job_id}.")
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    filtered = query != RowQuery()
    shown = count_rows(db(), record, query, margin) if filtered else record.total
    size = current_app.config["RESULTS_PAGE_SIZE"]
    pages = max(1, -(-shown // size))
    page = min(max(request.args.get("page", 1, type=int), 1), pages)
    rows = result_rows(db(), record, (page - 1) * size, size, query=query, margin=margin)
    return render_template(
        "job.html", job=job_dict(record), rows=rows, page=page, pages=pages, shown=shown, filtered=filtered,
        query=query, args=query.args(), summary=job_summary(db(), record, margin),
        flag="ood" if query.in_distribution is False else None,
    )


@bp.get("/models")
def models() -> ResponseReturnValue:
    versions = db().scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
    active_model()  # registers the shipped release model on a fresh install
    ready = db().scalars(select(Dataset).where(Dataset.status == DatasetStatus.READY).order_by(Dataset.name)).all()
    actions = model_actions(versions) if current_user().is_admin else None
    return render_template("models.html", models=[model_dict(v) for v in versions], datasets=ready,
                           splits=SPLIT_CHOICES, actions=actions)


@bp.get("/models/<int:version_id>/plots/<name>")
def model_plot(version_id: int, name: str) -> ResponseReturnValue:
    """Serve a plot by the storage key recorded on the version row, never a path taken from the URL."""
    version = db().get(ModelVersion, version_id)
    return send_stored_png((version.plots or {}).get(name) if version else None)


@bp.get("/training")
def training() -> ResponseReturnValue:
    session = db()
    runs = session.scalars(select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(50)).all()
    names = {row.id: row.name for row in session.execute(select(ModelVersion.id, ModelVersion.name))}
    count = session.scalar(select(func.count(TrainingRun.id)))
    return render_template("training.html", runs=runs, names=names, count=count)


@bp.post("/training/retrain")
def retrain() -> ResponseReturnValue:
    """Record a training run, then send `training.retrain` by name to the training queue."""
    require_admin("start a training run")
    problem = trainings.default_dataset_problem(settings().dataset_dir)
    if problem:  # refused before a run is recorded: it could only fail
        abort(409, description=f"Cannot retrain: {problem}.")
    session = db()
    run = trainings.create_run(session, {}, "requested on the training page")
    session.commit()
    try:
        send_run(run)
    except NotSent:
        flash("The task queue is unavailable; the run was not started.", "error")
        return redirect(url_for("pages.training"))
    flash(f"Training run #{run.id} queued.", "ok")
    return redirect(url_for("pages.training"))
