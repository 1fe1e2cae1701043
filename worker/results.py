"""Write Result rows idempotently and derive a job's progress from them (never by incrementing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fracture.models import Job, JobStatus, Result


@dataclass(frozen=True)
class Row:
    """The outcome of one image, ready to upsert."""

    image_id: int
    prediction: str | None = None
    probability: float | None = None
    error: str | None = None


def _insert(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Result)
    if dialect == "sqlite":
        return sqlite.insert(Result)
    raise NotImplementedError(f"no upsert for database dialect {dialect!r}")


def upsert_results(
    session: Session, job_id: str, model_version_id: int | None, rows: Sequence[Row], overwrite: bool = True
) -> None:
    """Insert one Result per row; an existing (image, model version) row is replaced, or kept if not `overwrite`."""
    if not rows:
        return
    now = datetime.now(UTC)
    values = [
        {
            "image_id": r.image_id, "job_id": job_id, "model_version_id": model_version_id,
            "prediction": r.prediction, "probability": r.probability, "error": r.error, "created_at": now,
        }
        for r in rows
    ]
    stmt = _insert(session).values(values)
    keys = ["image_id", "model_version_id"]
    if overwrite:
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c: stmt.excluded[c] for c in ("prediction", "probability", "error", "created_at")},
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    session.execute(stmt)


def lock_job(session: Session, job_id: str) -> Job | None:
    """Load the job row locked for this transaction, so concurrent chunks count progress one at a time."""
    return session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()


def refresh_progress(session: Session, job: Job) -> None:
    """Recompute processed/failed from the job's Result rows; finish the job once every image has one.

    `processed` counts every image with an outcome (errors included), `failed` those whose outcome is an error.
    """
    counts = session.execute(
        select(func.count(Result.id), func.count(Result.error)).where(
            Result.job_id == job.id, Result.model_version_id == job.model_version_id
        )
    ).one()
    job.processed, job.failed = int(counts[0]), int(counts[1])
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and job.processed >= job.total:
        now = datetime.now(UTC)
        job.status = JobStatus.DONE
        job.started_at = job.started_at or now
        job.finished_at = now


def mark_running(session: Session, job_id: str) -> None:
    """Move a queued job to running (a conditional update: a second chunk changes nothing)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=datetime.now(UTC))
    )
