"""The reaper: find work the broker lost or a dead process left behind, and put it right.

Run by beat as `maintenance.reap` every settings.reaper_interval_s, and callable as a plain function:

- a job saved while the broker was down (never dispatched) is dispatched;
- a queued or running job with images still lacking a result and no progress for settings.reaper_stale_s is
  re-enqueued, once the inference queue is empty (a long queue is not a lost one); chunks are idempotent, so
  a chunk that was only slow costs a duplicate, never a second result;
- a training run, an evaluation or a dataset validation whose trainer stopped beating (no heartbeat for
  settings.heartbeat_stale_s: the worker was killed) is marked failed (a dataset invalid) with that reason, and a
  training run left `running` longer than its time limit plus the stale threshold too;
- an upload folder with no job row (the web died while receiving or storing it) is deleted once it is stale;
- a final DICOM job whose report was never asked for (the broker was down when it ended) is reported, and a
  delivery to the PACS never attempted is sent again, once the inference queue is empty.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from fracture import datasets, deliveries, evaluations, trainings
from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import FINAL_JOB_STATUSES, Job, JobSource, JobStatus, Result
from fracture.queue import BrokerUnavailable, enqueue_job, queued_messages, send_delivery, send_report
from fracture.storage import Storage

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# A job the web committed but has not dispatched yet is normally milliseconds old; leave it this long to the web.
DISPATCH_GRACE_S = 10
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ReapReport:
    """What one pass of the reaper did."""

    dispatched: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    chunks: int = 0
    waiting_on_queue: int = 0
    failed_runs: list[int] = field(default_factory=list)
    failed_evaluations: list[int] = field(default_factory=list)
    failed_validations: list[int] = field(default_factory=list)
    removed_uploads: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)
    broker_error: str | None = None

    @property
    def acted(self) -> bool:
        return bool(self.dispatched or self.requeued or self.failed_runs or self.failed_evaluations
                    or self.failed_validations or self.removed_uploads or self.reports or self.deliveries
                    or self.broker_error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_lost_jobs(settings: Settings, now: datetime) -> tuple[list[str], list[str]]:
    """(never dispatched, stalled): unfinished jobs the broker may no longer hold, oldest first."""
    last_result = (
        select(Result.job_id, func.max(Result.created_at).label("at")).group_by(Result.job_id).subquery()
    )
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Job.id, Job.created_at, Job.enqueued_at, Job.started_at, last_result.c.at)
            .outerjoin(last_result, last_result.c.job_id == Job.id)
            .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)), Job.processed < Job.total)
            .order_by(Job.created_at)
        ).all()
    never, stalled = [], []
    for job_id, created, enqueued, started, last in rows:
        if enqueued is None:
            if now - created > timedelta(seconds=min(DISPATCH_GRACE_S, settings.reaper_stale_s)):
                never.append(job_id)
            continue
        activity = max(t for t in (created, enqueued, started, last) if t is not None)
        if now - activity > timedelta(seconds=settings.reaper_stale_s):
            stalled.append(job_id)
    return never, stalled


def fail_dead_training_runs(settings: Settings, now: datetime) -> list[int]:
    """Mark failed the runs still `running` whose trainer stopped beating or ran far past its time limit."""
    with session_scope(settings.database_url) as session:
        return trainings.fail_dead_runs(session, now, settings.training_time_limit_s, settings.reaper_stale_s,
                                        settings.heartbeat_stale_s)


def fail_dead_evaluations(settings: Settings, now: datetime) -> list[int]:
    """Mark failed the evaluations still `running` whose trainer stopped beating."""
    with session_scope(settings.database_url) as session:
        return evaluations.fail_dead_evaluations(session, now, settings.heartbeat_stale_s)


def fail_dead_validations(settings: Settings, now: datetime) -> list[int]:
    """Mark invalid the datasets whose validation a trainer started and stopped beating for."""
    with session_scope(settings.database_url) as session:
        return datasets.fail_dead_validations(session, now, settings.heartbeat_stale_s)


def remove_orphan_uploads(settings: Settings, now: datetime) -> list[str]:
    """Delete upload folders that no job row owns and that nothing has written to for the stale threshold."""
    storage = Storage(settings.storage_dir)
    root = storage.root / "uploads"
    if not root.is_dir():
        return []
    candidates = [p for p in root.iterdir() if p.is_dir() and _JOB_ID.match(p.name)]
    if not candidates:
        return []
    with session_scope(settings.database_url) as session:
        known = set(session.scalars(select(Job.id).where(Job.id.in_([p.name for p in candidates]))))
    removed = []
    cutoff = now.timestamp() - settings.reaper_stale_s
    for folder in candidates:
        if folder.name in known:
            continue
        try:
            newest = max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
        except FileNotFoundError:
            continue  # removed meanwhile
        if newest < cutoff:
            storage.delete_prefix(f"uploads/{folder.name}")
            removed.append(folder.name)
    return removed


def unreported_dicom_jobs(settings: Settings, now: datetime) -> list[str]:
    """Final DICOM jobs whose results were never built for the PACS, finished over the stale threshold ago."""
    if not settings.dicom_send_results_to:
        return []
    cutoff = now - timedelta(seconds=settings.reaper_stale_s)
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Job.id).where(
            Job.source == JobSource.DICOM, Job.reported_at.is_(None), Job.status.in_(FINAL_JOB_STATUSES),
            Job.finished_at < cutoff)))


def lost_deliveries(settings: Settings, now: datetime) -> list[int]:
    """Deliveries to the PACS recorded over the stale threshold ago and never attempted."""
    with session_scope(settings.database_url) as session:
        return deliveries.never_tried(session, now - timedelta(seconds=settings.reaper_stale_s))


def reap(celery_app: Celery, settings: Settings, now: datetime | None = None) -> ReapReport:
    """One pass: dispatch, re-enqueue, fail and clean up as described in the module docstring."""
    now = now or datetime.now(UTC)
    report = ReapReport()
    never, stalled = find_lost_jobs(settings, now)
    try:
        for job_id in never:
            report.chunks += enqueue_job(celery_app, settings, job_id)
            report.dispatched.append(job_id)
        if stalled:
            waiting = queued_messages(celery_app)
            if waiting:
                report.waiting_on_queue = waiting
            else:
                for job_id in stalled:
                    report.chunks += enqueue_job(celery_app, settings, job_id)
                    report.requeued.append(job_id)
        for job_id in unreported_dicom_jobs(settings, now):
            send_report(celery_app, job_id)  # the report task claims it once
            report.reports.append(job_id)
        lost = lost_deliveries(settings, now)
        if lost and not queued_messages(celery_app):  # a long queue is not a lost one
            for delivery_id in lost:
                send_delivery(celery_app, delivery_id)
                report.deliveries.append(delivery_id)
    except BrokerUnavailable as e:
        report.broker_error = str(e)
    report.failed_runs = fail_dead_training_runs(settings, now)
    report.failed_evaluations = fail_dead_evaluations(settings, now)
    report.failed_validations = fail_dead_validations(settings, now)
    report.removed_uploads = remove_orphan_uploads(settings, now)
    log_actions(report)
    return report


def log_actions(report: ReapReport) -> None:
    """One line per thing the reaper did, carrying its id (a job, a run, a delivery)."""
    for job_id in report.dispatched:
        log.warning("reaper: job %s dispatched (it was saved but never sent)", job_id, extra={"job_id": job_id})
    for job_id in report.requeued:
        log.warning("reaper: job %s re-enqueued (no progress for the stale threshold)", job_id,
                    extra={"job_id": job_id})
    if report.waiting_on_queue:
        log.info("reaper: stalled jobs wait behind %d queued messages", report.waiting_on_queue)
    for job_id in report.reports:
        log.warning("reaper: job %s's DICOM report requested again", job_id, extra={"job_id": job_id})
    for delivery_id in report.deliveries:
        log.warning("reaper: delivery %d sent again (never attempted)", delivery_id,
                    extra={"delivery_id": delivery_id})
    for run_id in report.failed_runs:
        log.warning("reaper: training run %d failed (running long past its time limit)", run_id,
                    extra={"run_id": run_id})
    for job_id in report.removed_uploads:
        log.warning("reaper: upload folder %s removed (no job owns it)", job_id)
    if report.broker_error:
        log.warning("reaper: the broker is unavailable: %s", report.broker_error)
