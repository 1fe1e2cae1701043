"""The JSON API: jobs in, status and results out, models and health; errors are JSON too."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify, request
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from fracture.jobs import result_columns
from fracture.models import Job, JobStatus, ModelVersion
from fracture.queue import broker_ping, worker_ping
from web.auth import current_user, job_or_404, visible
from web.context import active_model, celery, csv_download, db, settings
from web.ingest import UploadRefused
from web.jobs import JobNotDispatched, create_job, dispatch
from web.views import RowQuery, count_rows, iter_result_rows, job_dict, model_dict, parse_row_query, result_rows

bp = Blueprint("api", __name__, url_prefix="/api")


def error(message: str, status: int, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": message, **extra}), status


@bp.errorhandler(UploadRefused)
def _refused(exc: UploadRefused) -> tuple[Response, int]:
    return error(exc.message, exc.status)


@bp.errorhandler(JobNotDispatched)
def _not_dispatched(exc: JobNotDispatched) -> tuple[Response, int]:
    return jsonify({**job_dict(exc.job), "error": str(exc)}), 503


def _get_job(job_id: str) -> Job:
    return job_or_404(job_id)


@bp.post("/jobs")
def post_job() -> tuple[Response, int]:
    parts = request.files.getlist("files")
    if not parts:
        return error("No files in the upload: send one or more multipart parts named 'files'.", 400)
    job = create_job(parts, owner_id=current_user().id)
    return jsonify({"id": job.id, "status": job.status, "total": job.total}), 201


@bp.get("/jobs")
def list_jobs() -> Response:
    limit = min(request.args.get("limit", 100, type=int), 1000)
    jobs = db().scalars(visible(select(Job)).order_by(Job.created_at.desc()).limit(limit))
    return jsonify({"jobs": [job_dict(j) for j in jobs]})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(job_dict(_get_job(job_id)))


@bp.post("/jobs/<job_id>/dispatch")
def redispatch(job_id: str) -> tuple[Response, int]:
    """Hand a job that is still queued to the broker again (after the broker was down)."""
    job = _get_job(job_id)
    if job.status != JobStatus.QUEUED:
        return error(f"job {job_id} is {job.status}, not queued", 409)
    dispatch(job)
    return jsonify(job_dict(job)), 202


def _in_distribution_filter() -> bool | None:
    """The `in_distribution` query filter: true or false selects results by the detector's flag; absent, all."""
    value = request.args.get("in_distribution")
    if value is None or value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    abort(400, description="in_distribution must be true or false (or left out for every result).")


@bp.get("/jobs/<job_id>/results")
def get_results(job_id: str) -> Response:
    """The job's rows, in upload order or `?sort=`, filtered as the job page filters them (see parse_row_query)."""
    job = _get_job(job_id)
    offset = max(request.args.get("offset", 0, type=int), 0)
    limit = request.args.get("limit", type=int)
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    rows = result_rows(db(), job, offset, max(limit, 0) if limit is not None else None, query=query,
                       patient=settings().show_patient_identifiers, margin=margin)
    body: dict[str, Any] = {"job_id": job.id, "total": job.total, "offset": offset, "results": rows}
    if query != RowQuery():
        body["matching"] = count_rows(db(), job, query, margin)
        body.update(query.args())
    if query.in_distribution is not None:
        body["in_distribution"] = query.in_distribution
    return jsonify(body)


@bp.get("/jobs/<job_id>/results.csv")
def get_results_csv(job_id: str) -> Response:
    job = _get_job(job_id)
    flag = _in_distribution_filter()
    patient = settings().show_patient_identifiers
    rows = iter_result_rows(db(), job, in_distribution=flag, patient=patient)
    return csv_download(result_columns(patient), rows, f"fracture-{job.id[:8]}.csv")


@bp.get("/models")
def list_models() -> Response:
    versions = db().scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc()))
    active = active_model()
    return jsonify({"active": active.name if active else None, "models": [_public(model_dict(v)) for v in versions]})


def _public(model: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if not k.startswith("metric_")}


@bp.get("/health")
def health() -> tuple[Response, int]:
    try:
        db().execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return jsonify({"database": f"down: {exc.__class__.__name__}", "broker": "unknown"}), 503
    try:
        model = active_model()
    except SQLAlchemyError:
        return jsonify({"database": "not migrated: run `fracture db upgrade`", "broker": "unknown"}), 503
    app = celery()
    broker = "ok" if broker_ping(app) else "down"
    workers = worker_ping(app) if broker == "ok" else {"supported": None, "workers": []}
    return jsonify({
        "database": "ok",
        "broker": broker,
        "workers": workers,
        "model": {"active": model.name if model else None, "id": model.id if model else None},
    }), 200
