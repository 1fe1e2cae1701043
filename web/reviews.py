"""Corrections: a reader marks a prediction right or wrong (the right label), a job's reviews as CSV, and an
admin adds a job's reviewed images to a training dataset. Reviews are for whoever sees the job; additions are for
admins. The state lives in fracture.reviews and fracture.dataset_additions.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue

from fracture import dataset_additions, reviews
from fracture.datasets import DatasetError
from fracture.models import Job
from fracture.reviews import REVIEW_COLUMNS, ReviewError
from web.auth import current_user, job_or_404, require_admin
from web.context import csv_download, db, storage

bp = Blueprint("reviews", __name__)
REVIEW_PATH = "/api/jobs/<job_id>/images/<int:image_id>/review"


@bp.errorhandler(ReviewError)
def _review_refused(exc: ReviewError) -> ResponseReturnValue:
    db().rollback()
    return jsonify({"error": str(exc)}), exc.status


@bp.put(REVIEW_PATH)
def put_review(job_id: str, image_id: int) -> Response:
    """Record the current user's review of one image: {"label": one of the model's two classes}."""
    job = job_or_404(job_id)
    body = request.get_json(silent=True)
    label = body.get("label") if isinstance(body, dict) else None
    user = current_user()
    review = reviews.set_review(db(), storage(), job, image_id, label, user.id)
    answer = {"review": reviews.review_dict(review, user.username), "progress": reviews.progress(db(), job).as_dict()}
    db().commit()
    return jsonify(answer)


@bp.delete(REVIEW_PATH)
def delete_review(job_id: str, image_id: int) -> Response:
    """Clear the review of one image (whoever gave it)."""
    job = job_or_404(job_id)
    cleared = reviews.clear_review(db(), job, image_id)
    db().commit()
    return jsonify({"review": None, "cleared": cleared, "progress": reviews.progress(db(), job).as_dict()})


@bp.get("/api/jobs/<job_id>/reviews")
def get_reviews(job_id: str) -> Response:
    """The job's review progress and every review, by image id."""
    job = job_or_404(job_id)
    by_image = reviews.reviews_by_image(db(), job.id)
    return jsonify({"job_id": job.id, "progress": reviews.progress(db(), job).as_dict(),
                    "reviews": [by_image[i] for i in sorted(by_image)]})


@bp.get("/api/jobs/<job_id>/reviews.csv")
def get_reviews_csv(job_id: str) -> Response:
    """The job's reviewed images as CSV (every text cell made safe for spreadsheets)."""
    job = job_or_404(job_id)
    return csv_download(REVIEW_COLUMNS, reviews.iter_reviews(db(), job), f"fracture-{job.id[:8]}-reviews.csv")


def _add(job: Job, dataset_id: object) -> dataset_additions.AdditionReport:
    require_admin("add reviewed images to a training dataset")
    report = dataset_additions.add_reviewed(db(), storage(), job, dataset_id, current_user().id)
    db().commit()
    return report


@bp.post("/api/jobs/<job_id>/add-to-dataset")
def api_add_to_dataset(job_id: str) -> ResponseReturnValue:
    """Add the job's reviewed images, with their reviewed labels, to a training dataset: {"dataset_id": N}."""
    job = job_or_404(job_id)
    body = request.get_json(silent=True)
    try:
        report = _add(job, body.get("dataset_id") if isinstance(body, dict) else None)
    except DatasetError as exc:
        db().rollback()
        return jsonify({"error": str(exc)}), 400
    return jsonify(report.as_dict())


@bp.post("/jobs/<job_id>/add-to-dataset")
def add_to_dataset_page(job_id: str) -> ResponseReturnValue:
    """The job page's form (_add_reviewed.html): add, say what happened, back to the job."""
    job = job_or_404(job_id)
    raw = request.form.get("dataset_id", "")
    try:
        report = _add(job, int(raw) if raw.strip().isdigit() else None)
    except DatasetError as exc:
        db().rollback()
        flash(f"Nothing was added: {exc}.", "error")
    else:
        flash(report.sentence(), "ok")
    return redirect(url_for("pages.job", job_id=job.id))


@bp.app_template_global()
def review_progress(job_id: str) -> dict[str, int]:
    """A job's review progress (total, reviewed, correct, wrong) for a page."""
    return reviews.progress(db(), job_or_404(job_id)).as_dict()


@bp.app_template_global()
def training_datasets() -> list[dict[str, Any]]:
    """The datasets reviewed images may be added to (ready training datasets): [{"id", "name", "additions"}]."""
    return [{"id": d.id, "name": d.name, "additions": dataset_additions.addition_count(db(), d.id)}
            for d in dataset_additions.training_datasets(db())]
