"""The jobs pages: the upload form, the list of jobs and one job's reading list (its viewer is in images.py)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import dataset_additions, datasets, deliveries, reviews
from fracture.models import Job, JobSource
from web.auth import current_user, sees, visible
from web.context import NO_MODEL_MESSAGE, active_model, db, settings
from web.jobs.queries import RowQuery, count_rows, job_summary, parse_row_query, result_rows
from web.jobs.schemas import job_json

bp = Blueprint("jobs", __name__)


@bp.get("/")
def upload() -> ResponseReturnValue:
    return render_template(
        "upload.html", model=active_model(), no_model_message=NO_MODEL_MESSAGE,
        max_bytes=current_app.config["MAX_CONTENT_LENGTH"], max_files=settings().max_files_per_job,
    )


@bp.get("/jobs")
def index() -> ResponseReturnValue:
    rows = db().scalars(visible(select(Job)).order_by(Job.created_at.desc()).limit(200))
    return render_template("jobs.html", jobs=[job_json(j) for j in rows])


@bp.get("/jobs/<job_id>")
def page(job_id: str) -> ResponseReturnValue:
    """The job as a reading list: its summary and histogram, then its rows, filtered and sorted as asked."""
    session = db()
    record = session.get(Job, job_id)
    if record is None or not sees(record):
        abort(404, description=f"There is no job with id {job_id}.")
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    filtered = query != RowQuery()
    shown = count_rows(session, record, query, margin) if filtered else record.total
    size = current_app.config["RESULTS_PAGE_SIZE"]
    pages = max(1, -(-shown // size))
    page_no = min(max(request.args.get("page", 1, type=int), 1), pages)
    rows = result_rows(session, record, (page_no - 1) * size, size, query=query, margin=margin)
    additions = None
    if current_user().is_admin:  # the "add reviewed images to a dataset" form (_add_reviewed.html)
        additions = [{"id": d.id, "name": d.name, "additions": dataset_additions.addition_count(session, d.id)}
                     for d in datasets.ready_training_datasets(session)]
    return render_template(
        "job.html", job=job_json(record), rows=rows, page=page_no, pages=pages, shown=shown, filtered=filtered,
        query=query, args=query.args(), summary=job_summary(session, record, margin),
        flag="ood" if query.in_distribution is False else None,
        progress=reviews.progress(session, record).as_dict(), training_datasets=additions,
        deliveries=deliveries.for_job(session, record.id) if record.source == JobSource.DICOM else [],
    )
