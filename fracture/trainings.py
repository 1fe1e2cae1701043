"""The state of training runs and retraining schedules: the only code that creates runs and moves their status.

The web, the beat's schedule tick, the trainer and the reaper call these functions inside their own
transactions (each takes a Session).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from fracture.models import FINAL_RUN_STATUSES, RunStatus, Schedule, TrainingRun

BROKER_DOWN = "the task queue (broker) is unavailable"


def _aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; they were stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------- runs


def create_run(
    session: Session, params: dict[str, Any], message: str, schedule_id: int | None = None
) -> TrainingRun:
    """Add a queued run (flushed, not committed: the caller commits, then sends `training.retrain`)."""
    run = TrainingRun(status=RunStatus.QUEUED, params=dict(params), epochs=int(params.get("epochs", 0) or 0),
                      schedule_id=schedule_id, message=message)
    session.add(run)
    session.flush()
    return run


def start_run(session: Session, run_id: int) -> dict[str, Any] | None:
    """Move a run to running and return its parameters; None when it already ended (a redelivered task)."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise LookupError(f"training run {run_id} does not exist")
    if run.status in FINAL_RUN_STATUSES:
        return None
    if run.cancel_requested:  # cancelled while the web saw it queued and the trainer took it: never train
        cancel_run(session, run_id, "cancelled before it started")
        return None
    run.status, run.started_at, run.error = RunStatus.RUNNING, datetime.now(UTC), None
    run.log_key = log_key(run_id)
    return dict(run.params or {})


def record_epoch(session: Session, run_id: int, epoch: int, epochs: int, history: dict[str, list[float]]) -> None:
    """Record a finished epoch: progress, curves and a one-line message."""
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.epoch, run.epochs, run.history = epoch, epochs, dict(history)
        run.message = f"epoch {epoch}/{epochs}: val AUC {history['val_auc'][-1]:.4f}"


def finish_run(session: Session, run_id: int, version_id: int, message: str) -> None:
    """End a run as done, with the model version it registered."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise LookupError(f"training run {run_id} does not exist")
    run.status, run.finished_at, run.model_version_id = RunStatus.DONE, datetime.now(UTC), version_id
    run.message = message


def fail_run(session: Session, run_id: int, error: str, now: datetime | None = None) -> None:
    """End a run as failed with a reason."""
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.status, run.finished_at, run.error = RunStatus.FAILED, now or datetime.now(UTC), error


def log_key(run_id: int) -> str:
    """The storage key of a run's log (its folder also holds the trainer's checkpoints while it runs)."""
    return f"runs/{run_id}/train.log"


def request_cancel(session: Session, run_id: int) -> TrainingRun:
    """Ask a run to stop: a queued one ends `cancelled` now, a running one after its current epoch.

    LookupError if there is no such run; ValueError if it already ended.
    """
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise LookupError(f"there is no training run {run_id}")
    if run.status in FINAL_RUN_STATUSES:
        raise ValueError(f"training run {run_id} already ended ({run.status})")
    run.cancel_requested = True  # kept even when queued: a trainer that takes it meanwhile sees it
    if run.status == RunStatus.QUEUED:
        cancel_run(session, run_id, "cancelled before it started")
    else:
        run.message = "cancel requested: stopping after the current epoch"
    return run


def cancel_requested(session: Session, run_id: int) -> bool:
    """Whether someone asked run `run_id` to stop (the trainer asks after every epoch)."""
    run = session.get(TrainingRun, run_id)
    return run is None or bool(run.cancel_requested)


def cancel_run(session: Session, run_id: int, message: str) -> None:
    """End a run as cancelled (it registered nothing)."""
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.status, run.finished_at, run.message = RunStatus.CANCELLED, datetime.now(UTC), message


def queued_run_ids(session: Session) -> list[int]:
    """Runs still waiting for the trainer, oldest first."""
    return list(session.scalars(
        select(TrainingRun.id).where(TrainingRun.status == RunStatus.QUEUED).order_by(TrainingRun.created_at)
    ))


def fail_dead_runs(session: Session, now: datetime, time_limit_s: int, stale_s: int) -> list[int]:
    """Mark failed the runs still `running` long after their time limit: their trainer is gone."""
    limit = timedelta(seconds=time_limit_s + stale_s)
    failed = []
    for run in session.scalars(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING)):
        started = run.started_at or run.created_at
        if started is not None and now - _aware(started) > limit:
            age = int((now - _aware(started)).total_seconds())
            fail_run(session, run.id, f"the trainer stopped without finishing: still running {age} s after it "
                                      f"started, past the {time_limit_s} s training time limit", now)
            failed.append(run.id)
    return failed


# ---------------------------------------------------------------- schedules


def add_schedule(session: Session, name: str, interval_minutes: int, now: datetime | None = None) -> Schedule:
    """Add an enabled schedule whose first run is one interval from now."""
    now = now or datetime.now(UTC)
    schedule = Schedule(name=name, interval_minutes=interval_minutes, enabled=True,
                        next_run_at=now + timedelta(minutes=interval_minutes))
    session.add(schedule)
    session.flush()
    return schedule


def create_due_runs(session: Session, now: datetime | None = None) -> list[int]:
    """Create a queued run for each enabled schedule that is due and return the run ids (the caller sends them).

    A schedule without next_run_at gets its first run one interval from now rather than at once; slots missed
    while the system was down are skipped instead of fired once each.
    """
    now = now or datetime.now(UTC)
    created: list[int] = []
    due = session.scalars(
        select(Schedule)
        .where(Schedule.enabled.is_(True), or_(Schedule.next_run_at.is_(None), Schedule.next_run_at <= now))
        .with_for_update()
    ).all()
    for schedule in due:
        interval = timedelta(minutes=max(1, schedule.interval_minutes or 60))
        if schedule.next_run_at is None:
            schedule.next_run_at = now + interval
            continue
        run = create_run(session, dict(schedule.params or {}), f"scheduled by {schedule.name!r}", schedule.id)
        created.append(run.id)
        schedule.last_run_at = now
        next_run = _aware(schedule.next_run_at) + interval
        schedule.next_run_at = next_run if next_run > now else now + interval
    return created
