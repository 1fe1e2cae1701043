"""A job's rows for pages, JSON and CSV: which rows (RowQuery), in what order, counted, summarised, stepped."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from flask import abort, url_for
from sqlalchemy import Select, and_, func, not_, or_, select
from sqlalchemy.orm import Session, aliased

from fracture.jobs import PATIENT_COLUMNS
from fracture.models import Image, Job, ModelVersion, Result, Review, User

# How the job page and the results API may order a job's rows: key -> (column, descending).
SORTS = ("seq", "probability", "-probability", "path", "-path")
# What they may filter on: the model's call, near the threshold, the detector's flag, an error, the review state.
REVIEW_STATES = ("reviewed", "unreviewed", "correct", "wrong")
_Select = TypeVar("_Select", bound=Select)  # a statement of any row shape


@dataclass(frozen=True)
class RowQuery:
    """Which rows of a job to list, and in what order (every field optional: all rows in upload order)."""

    prediction: str | None = None
    uncertain: bool = False
    in_distribution: bool | None = None
    error: bool | None = None
    review: str | None = None
    sort: str = "seq"
    image_id: int | None = None  # one image's row (the viewer)

    def args(self) -> dict[str, str]:
        """The query string that selects the same rows (pages and links keep the reader's filters)."""
        out = {"prediction": self.prediction, "uncertain": "1" if self.uncertain else None,
               "flag": "ood" if self.in_distribution is False else None,
               "in_distribution": "true" if self.in_distribution else None,
               "error": None if self.error is None else str(self.error).lower(), "review": self.review,
               "sort": None if self.sort == "seq" else self.sort}
        return {k: v for k, v in out.items() if v is not None}


def result_rows(
    session: Session, job: Job, offset: int = 0, limit: int | None = None, in_distribution: bool | None = None,
    patient: bool = False, query: RowQuery | None = None, margin: float = 0.1,
) -> list[dict[str, Any]]:
    """One row per image of `job`, in upload order; images without a result yet have no prediction.

    With `in_distribution` True or False, only the images whose result the detector found so; `query` filters and
    orders further (its "uncertain" is a probability within `margin` of the job's threshold). The patient's
    identifiers are in the rows only with `patient` (the SHOW_PATIENT_IDENTIFIERS setting), never otherwise.
    """
    if in_distribution is not None:
        query = replace(query or RowQuery(), in_distribution=in_distribution)
    return list(_rows(session, job, offset, limit, query or RowQuery(), patient, margin))


def iter_result_rows(
    session: Session, job: Job, batch: int = 1000, in_distribution: bool | None = None, patient: bool = False,
) -> Iterator[dict[str, Any]]:
    """Every row of `job` (or those `in_distribution` selects), in batches: a 20 000-image CSV never sits in memory."""
    offset = 0
    while True:
        rows = result_rows(session, job, offset, batch, in_distribution, patient)
        yield from rows
        if len(rows) < batch:
            return
        offset += batch


def parse_row_query(args: Mapping[str, str], labels: Sequence[str] = ("fractured", "not fractured")) -> RowQuery:
    """The filters and order of a request's query string (the job page, the viewer, the results API); 400 if bad."""

    def flag(name: str) -> bool | None:
        value = (args.get(name) or "").lower()
        if value in ("", "all"):
            return None
        if value in ("true", "false", "1", "0"):
            return value in ("true", "1")
        abort(400, description=f"{name} must be true or false (or left out for every result).")

    prediction = args.get("prediction") or None
    if prediction is not None and prediction not in labels:
        abort(400, description=f"prediction must be one of {', '.join(labels)}.")
    review = args.get("review") or None
    if review is not None and review not in REVIEW_STATES:
        abort(400, description=f"review must be one of {', '.join(REVIEW_STATES)}.")
    sort = args.get("sort") or "seq"
    if sort not in SORTS:
        abort(400, description=f"sort must be one of {', '.join(SORTS)}.")
    in_distribution = flag("in_distribution")
    if args.get("flag") == "ood":  # the job page's older link for the detector's flag
        in_distribution = False
    return RowQuery(prediction=prediction, uncertain=bool(flag("uncertain")), in_distribution=in_distribution,
                    error=flag("error"), review=review, sort=sort)


HISTOGRAM_BINS = 20


def job_summary(session: Session, job: Job, margin: float = 0.1) -> dict[str, Any]:
    """The shape of `GET /api/jobs/<id>/summary`: counts by call, flag, error and review, and a histogram of the
    probabilities (HISTOGRAM_BINS equal bins over [0, 1]) with the threshold they were called at."""
    on = _result_on(job)
    threshold = job.model_version.threshold if job.model_version else None
    predictions = dict(session.execute(
        select(Result.prediction, func.count()).select_from(Image).join(Result, on)
        .where(Image.job_id == job.id, Result.prediction.is_not(None)).group_by(Result.prediction)).all())
    # Binned here, not in SQL: CAST rounds on PostgreSQL and truncates on SQLite. 20,000 floats take a few ms.
    histogram = [0] * HISTOGRAM_BINS
    for p in session.scalars(select(Result.probability).select_from(Image).join(Result, on)
                             .where(Image.job_id == job.id, Result.probability.is_not(None))):
        histogram[min(max(int((p or 0.0) * HISTOGRAM_BINS), 0), HISTOGRAM_BINS - 1)] += 1
    reviews = dict(session.execute(
        select(Review.correct, func.count()).where(Review.job_id == job.id).group_by(Review.correct)).all())
    return {
        "job_id": job.id,
        "status": job.status,
        "total": job.total,
        "processed": job.processed,
        "predictions": predictions,
        "fractured": predictions.get("fractured", 0),
        "not_fractured": predictions.get("not fractured", 0),
        "out_of_distribution": job.out_of_distribution or 0,
        "errors": job.failed,
        "uncertain": count_rows(session, job, RowQuery(uncertain=True), margin),
        "uncertain_margin": margin,
        "reviewed": sum(reviews.values()),
        "reviewed_correct": reviews.get(True, 0),
        "reviewed_wrong": reviews.get(False, 0),
        "threshold": threshold,
        "histogram": {"bins": HISTOGRAM_BINS, "edges": [k / HISTOGRAM_BINS for k in range(HISTOGRAM_BINS + 1)],
                      "counts": histogram},
    }


def _result_on(job: Job) -> Any:
    # The job pins its model version; a result under another version (an old re-run) is not this job's.
    return and_(Result.image_id == Image.id, Result.model_version_id == job.model_version_id)


def _filtered(stmt: _Select, job: Job, query: RowQuery, margin: float) -> _Select:
    """`stmt` (over Image outer-joined to Result and Review) limited to the rows `query` selects."""
    if query.image_id is not None:
        stmt = stmt.where(Image.id == query.image_id)
    if query.prediction is not None:
        stmt = stmt.where(Result.prediction == query.prediction)
    if query.uncertain:
        threshold = job.model_version.threshold if job.model_version else 0.5
        stmt = stmt.where(Result.probability.between(threshold - margin, threshold + margin))
    if query.in_distribution is not None:
        stmt = stmt.where(Result.in_distribution == query.in_distribution)
    if query.error is not None:
        failed = or_(Result.error.is_not(None), Image.ingest_error.is_not(None))
        stmt = stmt.where(failed if query.error else not_(failed))
    if query.review == "reviewed":
        stmt = stmt.where(Review.id.is_not(None))
    elif query.review == "unreviewed":
        stmt = stmt.where(Review.id.is_(None))
    elif query.review in ("correct", "wrong"):
        stmt = stmt.where(Review.correct == (query.review == "correct"))
    return stmt


def _ordered(stmt: _Select, sort: str) -> _Select:
    column = {"probability": Result.probability, "path": Image.path}.get(sort.lstrip("-"))
    if column is None:
        return stmt.order_by(Image.seq)
    # Rows without a probability (errors, not yet classified) last either way; then upload order breaks ties.
    return stmt.order_by(column.is_(None), column.desc() if sort.startswith("-") else column.asc(), Image.seq)


def count_rows(session: Session, job: Job, query: RowQuery, margin: float = 0.1) -> int:
    """How many rows of `job` `query` selects (the pager's total)."""
    stmt = (select(func.count(Image.id)).select_from(Image).outerjoin(Result, _result_on(job))
            .outerjoin(Review, Review.image_id == Image.id).where(Image.job_id == job.id))
    return session.scalar(_filtered(stmt, job, query, margin)) or 0


def neighbours(session: Session, job: Job, image_id: int, query: RowQuery,
               margin: float = 0.1) -> tuple[int | None, int | None, int, int]:
    """The images before and after `image_id` in the list `query` selects, its 1-based position, and the count.

    The viewer steps through the reader's own filtered, sorted list; an image outside it (the filter changed
    under it) is placed at 0 with the list's first image next.
    """
    stmt = (select(Image.id).outerjoin(Result, _result_on(job)).outerjoin(Review, Review.image_id == Image.id)
            .where(Image.job_id == job.id))
    ids = list(session.scalars(_ordered(_filtered(stmt, job, query, margin), query.sort)))
    if image_id not in ids:
        return None, (ids[0] if ids else None), 0, len(ids)
    k = ids.index(image_id)
    return (ids[k - 1] if k > 0 else None), (ids[k + 1] if k + 1 < len(ids) else None), k + 1, len(ids)


def _rows(
    session: Session, job: Job, offset: int, limit: int | None, query: RowQuery, patient: bool, margin: float,
) -> Iterator[dict[str, Any]]:
    version = aliased(ModelVersion)
    reviewer = aliased(User)
    # Plain columns, not ORM entities: a request's session would otherwise keep every row it streamed
    # (two objects per image) until the end of a 10,000-row CSV.
    stmt = (
        select(Image.id.label("image_id"), Image.seq, Image.path, Image.ingest_error, Result.prediction,
               Result.probability, Result.in_distribution, Result.ood_score, Result.error,
               version.name.label("model_version"), Image.thumbnail_key, Review.label.label("review_label"),
               Review.correct, reviewer.username, Review.reviewed_at, Image.study_instance_uid,
               Image.sop_instance_uid, Image.patient_name, Image.patient_id, Image.patient_birth_date)
        .outerjoin(Result, _result_on(job))
        .outerjoin(version, version.id == Result.model_version_id)
        .outerjoin(Review, Review.image_id == Image.id)
        .outerjoin(reviewer, reviewer.id == Review.reviewer_id)
        .where(Image.job_id == job.id)
        .offset(offset)
    )
    stmt = _ordered(_filtered(stmt, job, query, margin), query.sort)
    if limit is not None:
        stmt = stmt.limit(limit)
    for r in session.execute(stmt).mappings():
        row = {
            "image_id": r["image_id"],
            "seq": r["seq"],
            "path": r["path"],
            "prediction": r["prediction"],
            "probability": r["probability"],
            "in_distribution": r["in_distribution"],
            "ood_score": r["ood_score"],
            "model_version": r["model_version"],
            "error": r["error"] or r["ingest_error"],
            "study_instance_uid": r["study_instance_uid"],
            "sop_instance_uid": r["sop_instance_uid"],
            "thumbnail_url": (url_for("jobs_api.thumbnail", job_id=job.id, image_id=r["image_id"])
                              if r["thumbnail_key"] else None),
            "review": None if r["review_label"] is None else {
                "label": r["review_label"], "correct": r["correct"], "reviewer": r["username"],
                "reviewed_at": r["reviewed_at"].isoformat() if r["reviewed_at"] else None,
            },
        }
        if patient:
            row.update({column: r[column] for column in PATIENT_COLUMNS})
        yield row
