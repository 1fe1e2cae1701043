"""The jobs API: upload a batch, follow it, read its results as JSON or CSV, send a queued job again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, abort, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.jobs import result_columns
from fracture.models import Job, JobStatus
from fracture.queue import BrokerUnavailable
from web.auth import current_user, job_or_404, visible
from web.context import csv_download, db, settings
from web.jobs import schemas as s
from web.jobs.ingest import UploadRefused
from web.jobs.intake import create_job, dispatch
from web.jobs.queries import RowQuery, count_rows, iter_result_rows, parse_row_query, result_rows
from web.openapi import ApiBlueprint, not_sent

bp = ApiBlueprint("jobs_api", __name__, url_prefix="/api", description="Batches of X-rays and their results.")


@bp.errorhandler(UploadRefused)
def _refused(exc: UploadRefused) -> tuple[dict[str, Any], int]:
    return {"error": exc.message}, exc.status


@bp.errorhandler(BrokerUnavailable)
def _not_dispatched(exc: BrokerUnavailable) -> ResponseReturnValue:
    job = exc.subject
    assert isinstance(job, Job)
    return not_sent(exc, s.job_json(job))


@bp.post("/jobs")
@bp.doc(requestBody={"required": True, "content": {"multipart/form-data": {"schema": s.UploadSchema}}})
@bp.response(201, s.JobCreatedSchema)
@bp.alt_response(503, schema=s.JobNotSentSchema, description="Recorded, but the broker is down: not sent yet.")
def post_job() -> tuple[Job, int]:
    """Upload a batch: image files and zips as multipart parts named `files`; the job is queued."""
    parts = request.files.getlist("files")
    if not parts:
        abort(400, description="No files in the upload: send one or more multipart parts named 'files'.")
    return create_job(parts, owner_id=current_user().id), 201


@bp.get("/jobs")
@bp.arguments(s.JobListQuery, location="query")
@bp.response(200, s.JobListSchema)
def list_jobs(args: dict[str, Any]) -> dict[str, Any]:
    """The jobs the caller may see (an admin: all), newest first."""
    jobs = db().scalars(visible(select(Job)).order_by(Job.created_at.desc()).limit(args["limit"]))
    return {"jobs": list(jobs)}


@bp.get("/jobs/<job_id>")
@bp.response(200, s.JobSchema)
def get_job(job_id: str) -> Job:
    """One job's status and progress (the status page polls this)."""
    return job_or_404(job_id)


@bp.post("/jobs/<job_id>/dispatch")
@bp.response(202, s.JobSchema)
@bp.alt_response(503, schema=s.JobNotSentSchema, description="The broker is still down.")
def redispatch(job_id: str) -> tuple[Job, int]:
    """Hand a job that is still queued to the broker again (after the broker was down)."""
    job = job_or_404(job_id)
    if job.status != JobStatus.QUEUED:
        abort(409, description=f"job {job_id} is {job.status}, not queued")
    dispatch(job)
    return job, 202


@bp.get("/jobs/<job_id>/results")
@bp.arguments(s.ResultsQuery, location="query")
@bp.response(200, s.ResultsPageSchema)
def get_results(args: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The job's rows, in upload order or `sort`, filtered as the job page filters them."""
    job = job_or_404(job_id)
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    limit = args.get("limit")
    rows = result_rows(db(), job, args["offset"], limit, query=query,
                       patient=settings().show_patient_identifiers, margin=margin)
    body: dict[str, Any] = {"job_id": job.id, "total": job.total, "offset": args["offset"], "results": rows}
    if query != RowQuery():
        body["matching"] = count_rows(db(), job, query, margin)
        body.update(query.args())
    if query.in_distribution is not None:
        body["in_distribution"] = query.in_distribution
    return body


@bp.get("/jobs/<job_id>/results.csv")
@bp.arguments(s.CsvQuery, location="query")
@bp.response(200, {"type": "string"}, content_type="text/csv")
def get_results_csv(args: dict[str, Any], job_id: str) -> Response:
    """The job's results as CSV (the same fields as the JSON); `in_distribution` selects by the detector's flag."""
    job = job_or_404(job_id)
    value = (args.get("in_distribution") or "").lower()
    flag = None if value in ("", "all") else value in ("true", "1")
    patient = settings().show_patient_identifiers
    job_id = job.id

    def rows(session: Session) -> Iterator[dict[str, Any]]:
        return iter_result_rows(session, session.get_one(Job, job_id), in_distribution=flag, patient=patient)

    return csv_download(result_columns(patient), rows, f"fracture-{job_id[:8]}.csv")
