"""The state of reviews: the only code that writes Review and DatasetAddition rows.

A reader marks an image's prediction right or wrong by giving its label (one of the job's model's two classes);
the latest review of an image counts. An admin adds a job's reviewed images, with their reviewed labels, to a
ready training dataset (fracture.dataset_additions); the trainer trains on them with that dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fracture.db import insert_on_conflict
from fracture.models import Image, Job, ModelVersion, Result, Review, User
from fracture.storage import Storage

# The columns of a job's reviews CSV.
REVIEW_COLUMNS = ("path", "prediction", "probability", "reviewed_label", "correct", "reviewer", "reviewed_at")
DEFAULT_LABELS = ("fractured", "not fractured")


class ReviewError(ValueError):
    """A review cannot be recorded as asked; `status` is the HTTP status, the message one readable sentence."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Progress:
    """How far the review of a job has come: of the images with a prediction, how many are reviewed."""

    total: int  # images with a prediction under the job's model version
    reviewed: int
    correct: int  # the reader agreed with the prediction
    wrong: int  # the reader gave the other label

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@lru_cache(maxsize=16)
def _checkpoint_classes(path: str, sha256: str) -> tuple[str, ...]:
    from fracture.ml.checkpoint import read_payload  # torch: only when a review needs the model's classes

    del sha256  # part of the cache key: a replaced file is read again
    return tuple(str(c) for c in read_payload(path)["classes"])


def model_labels(storage: Storage, version: ModelVersion | None) -> tuple[str, ...]:
    """The two labels a reader may give under `version`: its checkpoint's classes (the names it predicts), as
    recorded at registration (read from the file for a version registered before they were)."""
    if version is None:
        return DEFAULT_LABELS
    if version.classes:
        return tuple(version.classes)
    return _checkpoint_classes(str(storage.path(version.checkpoint_key)), version.checkpoint_sha256)


def _image_of(session: Session, job: Job, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None or image.job_id != job.id:
        raise ReviewError(f"job {job.id} has no image {image_id}", 404)
    return image


def _result_of(session: Session, job: Job, image_id: int) -> Result | None:
    return session.scalars(
        select(Result).where(Result.image_id == image_id, Result.model_version_id == job.model_version_id)
    ).first()


def set_review(
    session: Session, storage: Storage, job: Job, image_id: int, label: object, reviewer_id: int | None,
    now: datetime | None = None,
) -> Review:
    """Record (or replace) the review of one image of `job`: its right label, who gave it and when.

    ReviewError (404) for an image not in the job, (400) for a label that is not one of the model's classes,
    (409) for an image the model has not classified (no prediction to judge).
    """
    _image_of(session, job, image_id)
    labels = model_labels(storage, job.model_version)
    if not isinstance(label, str) or label not in labels:
        raise ReviewError(f"label must be one of {', '.join(repr(x) for x in labels)}, not {label!r}")
    result = _result_of(session, job, image_id)
    if result is None or result.prediction is None:
        raise ReviewError(f"image {image_id} has no prediction to review (not classified yet, or it failed)", 409)
    values = {"image_id": image_id, "job_id": job.id, "label": label, "prediction": result.prediction,
              "correct": label == result.prediction, "reviewer_id": reviewer_id,
              "reviewed_at": now or datetime.now(UTC)}
    stmt = insert_on_conflict(session, Review).values(values)
    # One statement: two readers saving the same image at once leave one review, the later one.
    session.execute(stmt.on_conflict_do_update(
        index_elements=["image_id"], set_={c: stmt.excluded[c] for c in values if c != "image_id"}))
    session.expire_all()
    return session.scalars(select(Review).where(Review.image_id == image_id)).one()


def clear_review(session: Session, job: Job, image_id: int) -> bool:
    """Remove the review of one image of `job`; whether there was one. ReviewError (404) if not the job's image."""
    _image_of(session, job, image_id)
    removed = session.execute(delete(Review).where(Review.image_id == image_id, Review.job_id == job.id))
    return bool(removed.rowcount)  # type: ignore[attr-defined]  # a CursorResult for a DELETE


def progress(session: Session, job: Job) -> Progress:
    """The review progress of `job`."""
    total = session.scalar(select(func.count(Result.id)).where(
        Result.job_id == job.id, Result.model_version_id == job.model_version_id, Result.prediction.is_not(None)))
    reviewed, correct = session.execute(
        select(func.count(Review.id), func.count(Review.id).filter(Review.correct.is_(True)))
        .where(Review.job_id == job.id)
    ).one()
    return Progress(total=int(total or 0), reviewed=int(reviewed), correct=int(correct),
                    wrong=int(reviewed) - int(correct))


def review_dict(review: Review, reviewer: str | None) -> dict[str, Any]:
    """The JSON form of a review."""
    return {"image_id": review.image_id, "label": review.label, "prediction": review.prediction,
            "correct": review.correct, "reviewer": reviewer, "reviewed_at": _iso(review.reviewed_at)}


def reviews_by_image(session: Session, job_id: str, image_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """The reviews of a job's images (all, or those of `image_ids`: a page of the results table) by image id."""
    stmt = (select(Review, User.username).outerjoin(User, User.id == Review.reviewer_id)
            .where(Review.job_id == job_id))
    if image_ids is not None:
        stmt = stmt.where(Review.image_id.in_(image_ids))
    return {review.image_id: review_dict(review, name) for review, name in session.execute(stmt)}


def iter_reviews(session: Session, job: Job) -> Iterator[dict[str, object]]:
    """The reviewed images of `job` in upload order, as rows of REVIEW_COLUMNS (for the CSV)."""
    stmt = (
        select(Image.path, Review.prediction, Result.probability, Review.label, Review.correct, User.username,
               Review.reviewed_at)
        .join(Image, Image.id == Review.image_id)
        .outerjoin(Result, (Result.image_id == Review.image_id) & (Result.model_version_id == job.model_version_id))
        .outerjoin(User, User.id == Review.reviewer_id)
        .where(Review.job_id == job.id)
        .order_by(Image.seq)
        .execution_options(yield_per=500)
    )
    for path, prediction, probability, label, correct, reviewer, reviewed_at in session.execute(stmt):
        yield {"path": path, "prediction": prediction, "probability": probability, "reviewed_label": label,
               "correct": correct, "reviewer": reviewer, "reviewed_at": _iso(reviewed_at)}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
