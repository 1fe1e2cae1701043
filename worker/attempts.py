"""Count how often a worker starts on each image, so a chunk that keeps killing its worker ends in error rows."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fracture.models import Image, Result


def pending_attempts(session: Session, job_id: str, version_id: int | None, image_ids: list[int]) -> dict[int, int]:
    """Attempts so far of each image of `image_ids` that has no result under `version_id` yet."""
    done = select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == version_id)
    rows = session.execute(
        select(Image.id, Image.attempts).where(
            Image.job_id == job_id, Image.id.in_(image_ids), Image.id.not_in(done)
        )
    ).all()
    return {int(i): int(n or 0) for i, n in rows}


def count_attempt(session: Session, image_ids: list[int]) -> None:
    """Record that a worker is starting on `image_ids` (committed before the work, so a crash leaves it counted)."""
    if image_ids:
        session.execute(update(Image).where(Image.id.in_(image_ids)).values(attempts=Image.attempts + 1))


def crash_reason(attempts: int) -> str:
    return f"the worker crashed {attempts} times while classifying this image; it is not retried again"
