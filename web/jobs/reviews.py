"""Corrections: a reader marks a prediction right or wrong (the right label), a job's reviews as CSV, and an
admin adds a job's reviewed images to a training dataset. Reviews are for whoever sees the job; additions are for
admins. The state lives in fracture.reviews and fracture.dataset_additions.
"""

from __future__ import annotations

from typing import Any

from flask import Response, abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fracture import dataset_additions, reviews
from fracture.datasets import DatasetError
from fracture.models import Job
from fracture.reviews import REVIEW_COLUMNS, ReviewError
from web.auth import current_user, job_or_404, require_admin
from web.context import csv_download, db, storage
from web.jobs import schemas as s
from web.jobs.api import bp as api
from web.jobs.pages import bp as pages

REVIEW_PATH = "/jobs/<job_id>/images/<int:image_id>/review"


@api.errorhandler(ReviewError)
def _review_refused(exc: ReviewError) -> ResponseReturnValue:
    db().rollback()
    return {"error": str(exc)}, exc.status


@api.put(REVIEW_PATH)
@api.arguments(s.ReviewBody)
@api.response(200, s.ReviewAnswerSchema)
def put_review(body: dict[str, Any], job_id: str, image_id: int) -> dict[str, Any]:
    """Record the caller's review of one image: the right label, one of the model's two classes."""
    job = job_or_404(job_id)
    user = current_user()
    review = reviews.set_review(db(), storage(), job, image_id, body["label"], user.id)
    answer = {"review": reviews.review_dict(review, user.username), "progress": reviews.progress(db(), job).as_dict()}
    db().commit()
    return answer


@api.delete(REVIEW_PATH)
@api.response(200, s.ReviewAnswerSchema)
def delete_review(job_id: str, image_id: int) -> dict[str, Any]:
    """Clear the review of one image (whoever gave it)."""
    job = job_or_404(job_id)
    cleared = reviews.clear_review(db(), job, image_id)
    db().commit()
    return {"review": None, "cleared": cleared, "progress": reviews.progress(db(), job).as_dict()}


@api.get("/jobs/<job_id>/reviews")
@api.response(200, s.ReviewListSchema)
def get_reviews(job_id: str) -> dict[str, Any]:
    """The job's review progress and every review, by image id."""
    job = job_or_404(job_id)
    by_image = reviews.reviews_by_image(db(), job.id)
    return {"job_id": job.id, "progress": reviews.progress(db(), job).as_dict(),
            "reviews": [by_image[i] for i in sorted(by_image)]}


@api.get("/jobs/<job_id>/reviews.csv")
@api.doc(responses={"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_reviews_csv(job_id: str) -> Response:
    """The job's reviewed images as CSV (every text cell made safe for spreadsheets)."""
    job = job_or_404(job_id)
    job_id = job.id
    return csv_download(REVIEW_COLUMNS, lambda session: reviews.iter_reviews(session, session.get_one(Job, job_id)),
                        f"fracture-{job_id[:8]}-reviews.csv")


def _add(job: Job, dataset_id: object) -> dataset_additions.AdditionReport:
    require_admin("add reviewed images to a training dataset")
    report = dataset_additions.add_reviewed(db(), storage(), job, dataset_id, current_user().id)
    db().commit()
    return report


@api.post("/jobs/<job_id>/add-to-dataset")
@api.arguments(s.AddToDatasetBody)
@api.response(200, s.AdditionSchema)
def api_add_to_dataset(body: dict[str, Any], job_id: str) -> ResponseReturnValue:
    """Add the job's reviewed images, with their reviewed labels, to a training dataset (admins)."""
    job = job_or_404(job_id)
    try:
        report = _add(job, body["dataset_id"])
    except DatasetError as exc:
        db().rollback()
        abort(400, description=str(exc))
    return report.as_dict()


@pages.post("/jobs/<job_id>/add-to-dataset")
def add_to_dataset_page(job_id: str) -> ResponseReturnValue:
    """The job page's form (_add_reviewed.html): add, say what happened, back to the job."""
    job = job_or_404(job_id)
    raw = request.form.get("dataset_id", "")
    try:
        report = _add(job, int(raw) if raw.strip().isdecimal() else None)
    except DatasetError as exc:
        db().rollback()
        flash(f"Nothing was added: {exc}.", "error")
    else:
        flash(report.sentence(), "ok")
    return redirect(url_for("jobs.page", job_id=job.id))
