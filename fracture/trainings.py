"""The state of training runs and retraining schedules: the only code that creates runs and moves their status.

The web, the beat's schedule tick, the trainer and the reaper call these functions inside their own
transactions (each takes a Session).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fracture import heartbeats, schedule_params, schedule_times, val_auc
from fracture.models import FINAL_RUN_STATUSES, RunStatus, Schedule, ScheduleFiring, TrainingRun
from fracture.schedule_times import Spec

BROKER_DOWN = "the task queue (broker) is unavailable"
# What "Retrain now" needs and a fresh install lacks; the training page and the refusals say it the same way.
NO_DEFAULT_DATASET = ("no dataset is configured for \"Retrain now\": upload or register a training dataset on the "
                      "Datasets page and train on it, or set FRACTURE_DATASET to a folder with one subfolder per "
                      "class and restart `fracture up`")


def default_dataset_problem(dataset_dir: Path | None) -> str | None:
    """Why a run without datasets (on FRACTURE_DATASET) cannot work, or None when it can."""
    if dataset_dir is None:
        return NO_DEFAULT_DATASET
    if not dataset_dir.is_dir():
        return f"FRACTURE_DATASET ({dataset_dir}) is not a folder: set it to a folder with one subfolder per class"
    return None


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
    run.heartbeat_at = run.started_at
    run.log_key = log_key(run_id)
    return dict(run.params or {})


def beat_run(session: Session, run_id: int, now: datetime | None = None) -> None:
    """Record that the trainer running `run_id` is alive (while the run is `running`)."""
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
                    .values(heartbeat_at=now or datetime.now(UTC)))


def record_epoch(session: Session, run_id: int, epoch: int, epochs: int, history: dict[str, list[float]]) -> None:
    """Record a finished epoch: progress, curves and a one-line message."""
    run = session.get(TrainingRun, run_id)
    if run is not None:
        run.epoch, run.epochs, run.history = epoch, epochs, dict(history)
        run.message = f"epoch {epoch}/{epochs}: {val_auc.selection_text(history['val_auc'][-1])}"


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


def fail_dead_runs(
    session: Session, now: datetime, time_limit_s: int, stale_s: int, heartbeat_stale_s: int,
) -> list[int]:
    """Mark failed the runs still `running` whose trainer is gone: no heartbeat for `heartbeat_stale_s` (the worker
    was killed), or running past the time limit by `stale_s` (a trainer that never ends)."""
    limit = timedelta(seconds=time_limit_s + stale_s)
    failed = []
    for run in session.scalars(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING)):
        started = run.started_at or run.created_at
        reason: str | None
        if started is not None and now - started > limit:
            age = int((now - started).total_seconds())
            reason = (f"the trainer stopped without finishing: still running {age} s after it started, past the "
                      f"{time_limit_s} s training time limit")
        else:
            reason = heartbeats.stopped_worker(run.heartbeat_at or started, now, heartbeat_stale_s)
        if reason is not None:
            fail_run(session, run.id, reason, now)
            failed.append(run.id)
    return failed


# ---------------------------------------------------------------- schedules


def schedule_spec(schedule: Schedule) -> Spec:
    """When a schedule row is due, as a schedule_times.Spec."""
    return Spec(kind=schedule.kind or "every", interval_minutes=schedule.interval_minutes,
                time_of_day=schedule.time_of_day, weekday=schedule.weekday, cron=schedule.cron,
                timezone=schedule.timezone or "UTC")


def _set_spec(schedule: Schedule, spec: Spec, now: datetime) -> None:
    spec = schedule_times.check(spec)
    schedule.kind, schedule.interval_minutes, schedule.time_of_day = spec.kind, spec.interval_minutes, spec.time_of_day
    schedule.weekday, schedule.cron, schedule.timezone = spec.weekday, spec.cron, spec.timezone
    schedule.next_run_at = schedule_times.next_due(spec, now)


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    """The schedule `schedule_id`; LookupError if there is none."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise LookupError(f"there is no schedule with id {schedule_id}")
    return schedule


def add_schedule(
    session: Session, name: str, spec: Spec, params: dict[str, Any], now: datetime | None = None
) -> Schedule:
    """Add an enabled schedule (spec checked; params as schedule_params.check_params made them), first due after now."""
    schedule = Schedule(name=name, params=dict(params), enabled=True)
    _set_spec(schedule, spec, now or datetime.now(UTC))
    session.add(schedule)
    session.flush()
    return schedule


def update_schedule(
    session: Session, schedule_id: int, *, name: str | None = None, spec: Spec | None = None,
    params: dict[str, Any] | None = None, enabled: bool | None = None, now: datetime | None = None,
) -> Schedule:
    """Change a schedule; a new spec or a resume counts the next due time from now (paused slots are not caught up)."""
    now = now or datetime.now(UTC)
    schedule = get_schedule(session, schedule_id)
    if name is not None:
        schedule.name = name
    if params is not None:
        schedule.params = dict(params)
    resumed = enabled is True and not schedule.enabled
    if enabled is not None:
        schedule.enabled = enabled
    if spec is not None or resumed:
        _set_spec(schedule, spec or schedule_spec(schedule), now)
    return schedule


def delete_schedule(session: Session, schedule_id: int) -> None:
    """Delete a schedule and its firings; the runs it started stay, no longer linked to it."""
    schedule = get_schedule(session, schedule_id)
    session.execute(update(TrainingRun).where(TrainingRun.schedule_id == schedule_id).values(schedule_id=None))
    session.execute(delete(ScheduleFiring).where(ScheduleFiring.schedule_id == schedule_id))
    session.delete(schedule)
    session.flush()


def create_due_runs(session: Session, now: datetime | None = None) -> list[int]:
    """Create one queued run per due time of each enabled schedule due by `now`; return the ids to send.

    Exactly once per due time, also with two ticks at once (two beats, a restarted beat): a run goes with a
    schedule_firings row, unique on (schedule, due time), inserted in a SAVEPOINT, so the second insert fails
    and that tick creates nothing. The next due time is counted from `now`: slots missed while the system was
    down are skipped, not fired once each. A schedule without next_run_at gets its first due time, not a run.
    """
    now = now or datetime.now(UTC)
    created: list[int] = []
    due = session.scalars(
        select(Schedule)
        .where(Schedule.enabled.is_(True), or_(Schedule.next_run_at.is_(None), Schedule.next_run_at <= now))
        .order_by(Schedule.id)
        .with_for_update(skip_locked=True)  # PostgreSQL: a concurrent tick skips the rows this one holds
    ).all()
    for schedule in due:
        spec = schedule_spec(schedule)
        if schedule.next_run_at is None:
            schedule.next_run_at = schedule_times.next_due(spec, now)
            continue
        due_at = schedule.next_run_at
        # Written (and flushed) first, so on SQLite the savepoint below sits inside this tick's transaction.
        schedule.next_run_at = schedule_times.next_due(spec, now, previous=due_at)
        session.flush()
        firing = ScheduleFiring(schedule_id=schedule.id, due_at=due_at)
        try:
            with session.begin_nested():
                session.add(firing)
        except IntegrityError:
            continue  # another tick fired this due time and wrote the same next due time
        run = create_run(session, dict(schedule.params or {}),
                         f"scheduled by {schedule.name!r} for {due_at:%Y-%m-%d %H:%M} UTC", schedule.id)
        firing.run_id, schedule.last_run_at = run.id, now
        unusable = _unusable_datasets(session, schedule.params or {})
        if unusable:
            fail_run(session, run.id, f"the schedule's datasets cannot be used: {unusable}", now)
            continue
        created.append(run.id)
    session.flush()
    return created


def _unusable_datasets(session: Session, params: dict[str, Any]) -> str | None:
    """Why the datasets a schedule names can no longer be trained on (deleted, invalid), or None."""
    if "dataset_ids" not in params:
        return None  # a schedule from before datasets: the trainer's default dataset
    try:
        schedule_params.check_dataset_ids(session, params["dataset_ids"])
    except schedule_params.RecipeError as e:
        return str(e)
    return None
