"""Turn due retraining schedules (kept in the database) into queued TrainingRuns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select

from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import Schedule, TrainingRun


def _aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_due_schedules(
    settings: Settings, send_retrain: Callable[[int], None], now: datetime | None = None
) -> list[int]:
    """Create a TrainingRun for each enabled schedule that is due, send it, and return the run ids.

    A schedule without next_run_at gets its first run one interval from now rather than at once.
    """
    now = now or datetime.now(UTC)
    created: list[int] = []
    with session_scope(settings.database_url) as session:
        due = session.scalars(
            select(Schedule)
            .where(Schedule.enabled.is_(True), or_(Schedule.next_run_at.is_(None), Schedule.next_run_at <= now))
            .with_for_update()
        ).all()
        for schedule in due:
            interval = timedelta(minutes=max(1, schedule.interval_minutes))
            if schedule.next_run_at is None:
                schedule.next_run_at = now + interval
                continue
            params = dict(schedule.params or {})
            run = TrainingRun(status="queued", params=params, epochs=int(params.get("epochs", 0) or 0),
                              schedule_id=schedule.id, message=f"scheduled by {schedule.name!r}")
            session.add(run)
            session.flush()
            created.append(run.id)
            schedule.last_run_at = now
            # Skip missed slots (the system was down) instead of firing once for each of them.
            next_run = _aware(schedule.next_run_at) + interval
            schedule.next_run_at = next_run if next_run > now else now + interval
    # Send after the commit, so the trainer always finds the row it is told about.
    for run_id in created:
        send_retrain(run_id)
    return created
