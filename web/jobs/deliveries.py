"""A DICOM job's deliveries to the PACS: listed (API and the job page), sent again by an admin."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, url_for
from flask.typing import ResponseReturnValue

from fracture import deliveries, queue
from fracture.models import Delivery, Job
from web.auth import job_or_404, require_admin
from web.context import celery, db
from web.jobs import schemas as s
from web.jobs.api import bp as api
from web.jobs.pages import bp as pages


@api.get("/jobs/<job_id>/deliveries")
@api.response(200, s.DeliveryListSchema)
def get_deliveries(job_id: str) -> dict[str, Any]:
    """The job's results sent to the PACS: each object for each peer, its status, attempts and last error."""
    job = job_or_404(job_id)
    return {"job_id": job.id, "deliveries": deliveries.for_job(db(), job.id)}


def _resend(job: Job, delivery_id: int) -> Delivery:
    require_admin("send results to the PACS again")
    session = db()
    row = session.get(Delivery, delivery_id)
    if row is None or row.job_id != job.id:
        abort(404, description=f"job {job.id} has no delivery {delivery_id}")
    try:
        deliveries.resend(session, delivery_id)
    except ValueError as e:
        abort(409, description=str(e))
    session.commit()
    try:
        queue.send_delivery(celery(), delivery_id)
    except queue.BrokerUnavailable as e:
        abort(503, description=f"The delivery is queued but the task queue is unavailable ({e}); send it again.")
    return row


@api.post("/jobs/<job_id>/deliveries/<int:delivery_id>/resend")
@api.response(202, s.DeliverySchema)
def resend_api(job_id: str, delivery_id: int) -> tuple[Delivery, int]:
    """Send a delivery that has not been acknowledged again (admins); one the peer acknowledged is a 409."""
    return _resend(job_or_404(job_id), delivery_id), 202


@pages.post("/jobs/<job_id>/deliveries/<int:delivery_id>/resend")
def resend_page(job_id: str, delivery_id: int) -> ResponseReturnValue:
    row = _resend(job_or_404(job_id), delivery_id)
    flash(f"The {row.kind} is being sent to {row.peer} again.", "ok")
    return redirect(url_for("jobs.page", job_id=job_id, _anchor="deliveries"))
