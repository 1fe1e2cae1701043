"""Celery tasks: thin, named wrappers that call plain functions with ids and plain values."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from fracture.dispatch import CLASSIFY_TASK, INFERENCE_QUEUE
from worker.celery_app import TRAINING_QUEUE, settings_of, soft_time_limit
from worker.classify import classify_chunk, fail_images
from worker.reaper import reap
from worker.schedules import run_due_schedules

log = logging.getLogger(__name__)


@shared_task(name="inference.classify_chunk", bind=True, max_retries=5)
def classify_chunk_task(self: Task, job_id: str, image_ids: list[int]) -> None:
    """Classify one chunk of a job; safe to run more than once."""
    settings = settings_of(self.app)

    def resend(ids: list[int]) -> None:
        self.app.send_task(CLASSIFY_TASK, args=(job_id, ids), queue=INFERENCE_QUEUE)

    try:
        outcome = classify_chunk(settings, job_id, image_ids, resend=resend)
    except SoftTimeLimitExceeded:
        # Acked after this returns: record why, so the job still reaches a final state.
        limit = soft_time_limit(settings.task_time_limit_s)
        fail_images(settings, job_id, image_ids, f"timed out after {limit} s (the chunk's time limit)")
        return
    except OperationalError as e:
        # The database was busy or away: try again later, the chunk is idempotent.
        raise self.retry(exc=e, countdown=min(60, 2 ** (self.request.retries + 1))) from e
    log.info("job %s chunk of %d: %s", job_id, len(image_ids), outcome)


@shared_task(name="schedules.tick", bind=True)
def schedules_tick(self: Task) -> list[int]:
    """Queue a training run for every retraining schedule that is due."""
    app = self.app

    def send(run_id: int) -> None:
        app.send_task("training.retrain", args=(run_id,), queue=TRAINING_QUEUE)

    return run_due_schedules(settings_of(app), send)


@shared_task(name="maintenance.reap", bind=True)
def maintenance_reap(self: Task) -> dict[str, object]:
    """Re-enqueue jobs whose tasks vanished, fail dead training runs, delete interrupted uploads."""
    report = reap(self.app, settings_of(self.app))
    if report.acted:
        log.warning("reaper: %s", report)
    return report.as_dict()
