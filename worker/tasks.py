"""Celery tasks: thin, named wrappers that call plain functions with ids and plain values."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from worker.celery_app import TRAINING_QUEUE, settings_of
from worker.classify import classify_chunk, fail_images
from worker.schedules import run_due_schedules

log = logging.getLogger(__name__)


@shared_task(name="inference.classify_chunk", bind=True, max_retries=5)
def classify_chunk_task(self: Task, job_id: str, image_ids: list[int]) -> None:
    """Classify one chunk of a job; safe to run more than once."""
    settings = settings_of(self.app)
    try:
        outcome = classify_chunk(settings, job_id, image_ids)
    except SoftTimeLimitExceeded:
        # Acked after this returns: record why, so the job still reaches a final state.
        fail_images(settings, job_id, image_ids, f"timed out after {settings.task_time_limit_s} s")
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
