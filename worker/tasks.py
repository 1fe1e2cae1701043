"""The inference worker's Celery tasks: thin, named wrappers that call plain functions with ids and plain values."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from fracture import queue
from worker.celery_app import soft_time_limit
from worker.classify import classify_chunk, fail_images
from worker.dicom_results import DeliveryError, deliver, give_up, report_captures, report_job
from worker.heatmaps import make_heatmap, request_positive
from worker.reaper import reap
from worker.schedules import run_due_schedules

log = logging.getLogger(__name__)


def _database_busy(task: Task, e: OperationalError) -> Exception:
    """Retry `task` later: the database was busy or away, and every task here is idempotent."""
    return task.retry(exc=e, countdown=min(60, 2 ** (task.request.retries + 1)))


@shared_task(name=queue.CLASSIFY_TASK, bind=True, max_retries=5)
def classify_chunk_task(self: Task, job_id: str, image_ids: list[int]) -> None:
    """Classify one chunk of a job; safe to run more than once."""
    settings = queue.settings_of(self.app)

    def resend(ids: list[int]) -> None:
        queue.send_classify(self.app, job_id, ids)

    try:
        outcome = classify_chunk(settings, job_id, image_ids, resend=resend)
    except SoftTimeLimitExceeded:
        # Acked after this returns: record why, so the job still reaches a final state.
        limit = soft_time_limit(settings.task_time_limit_s)
        fail_images(settings, job_id, image_ids, f"timed out after {limit} s (the chunk's time limit)")
        return
    except OperationalError as e:
        # The database was busy or away: try again later, the chunk is idempotent.
        raise _database_busy(self, e) from e
    if outcome.seconds is None:
        log.info("job %s: chunk of %d images not run: %s (%d errors)", job_id, len(image_ids), outcome.skipped,
                 outcome.errors, extra={"images": len(image_ids)})
    else:
        log.info("job %s: chunk done: %d images, %d classified, %d errors in %.3f s; timings %s", job_id,
                 len(image_ids), outcome.classified, outcome.errors, outcome.seconds, outcome.timings,
                 extra={"images": len(image_ids), "seconds": round(outcome.seconds, 4)})
    if settings.dicom_send_results_to:
        try:  # the report task claims a final DICOM job once; for any other it does nothing
            queue.send_report(self.app, job_id)
        except queue.BrokerUnavailable as e:
            log.warning("job %s: report not requested (the reaper asks again): %s", job_id, e)
    if settings.heatmaps_above_threshold:
        try:
            sent = request_positive(settings, job_id, image_ids, lambda job, image, version: queue.send_heatmap(
                self.app, job, image, version, check_broker=False, interactive=False))
        except (queue.BrokerUnavailable, OperationalError) as e:
            # The chunk is done; its heatmaps can still be asked for one by one (a lost request is sent again).
            log.warning("job %s: heatmaps of the chunk not requested: %s", job_id, e)
        else:
            log.info("job %s: %d heatmaps requested", job_id, sent)


@shared_task(name=queue.HEATMAP_TASK, bind=True, max_retries=5)
def heatmap_task(self: Task, job_id: str, image_id: int, version_id: int) -> None:
    """Make the heatmap of one image under one model version; safe to run more than once."""
    settings = queue.settings_of(self.app)
    try:
        outcome = make_heatmap(settings, job_id, image_id, version_id)
    except OperationalError as e:
        raise _database_busy(self, e) from e
    log.info("job %s image %d heatmap: %s", job_id, image_id, outcome)


@shared_task(name=queue.SCHEDULES_TICK_TASK, bind=True)
def schedules_tick(self: Task) -> list[int]:
    """Queue a training run for every retraining schedule that is due."""
    app = self.app
    return run_due_schedules(queue.settings_of(app), lambda run_id: queue.send_retrain(app, run_id))


@shared_task(name=queue.REAP_TASK, bind=True)
def maintenance_reap(self: Task) -> dict[str, object]:
    """Re-enqueue jobs whose tasks vanished, fail dead training runs, delete interrupted uploads."""
    return reap(self.app, queue.settings_of(self.app)).as_dict()  # reap logs one line per action


@shared_task(name=queue.REPORT_TASK, bind=True, max_retries=5)
def report_task(self: Task, job_id: str) -> bool:
    """Build a final DICOM job's SR once and send its deliveries; then queue the heatmap captures behind them."""
    settings = queue.settings_of(self.app)
    try:
        claimed = report_job(settings, job_id, lambda delivery_id: queue.send_delivery(self.app, delivery_id))
    except OperationalError as e:
        raise _database_busy(self, e) from e
    if claimed and settings.dicom_send_heatmaps:
        queue.send_captures(self.app, job_id)  # behind the SR's deliveries in the queue: the SR goes out first
    return claimed


@shared_task(name=queue.CAPTURES_TASK, bind=True, max_retries=5)
def captures_task(self: Task, job_id: str) -> int:
    """Make a DICOM job's heatmap captures and send each one's deliveries as soon as it is made."""
    settings = queue.settings_of(self.app)
    try:
        sent = report_captures(settings, job_id, lambda delivery_id: queue.send_delivery(self.app, delivery_id))
    except OperationalError as e:
        raise _database_busy(self, e) from e
    log.info("job %s: %d capture deliveries to the PACS", job_id, sent)
    return sent


# Attempts of one delivery, 10 s apart at first and doubling up to 10 min: about 1 h 30 min from the first failure
# before it is given up (FAILED, with the last error); a peer back within that window gets everything.
DELIVERY_ATTEMPTS = 14


def delivery_countdown(retries: int) -> int:
    """Seconds before the next attempt after `retries` failed ones."""
    return min(600, 10 * 2**retries)


@shared_task(name=queue.DELIVER_TASK, bind=True, max_retries=DELIVERY_ATTEMPTS - 1)
def deliver_task(self: Task, delivery_id: int) -> str:
    """Send one SR or capture to one peer by C-STORE; on failure try again later, within the retry window."""
    settings = queue.settings_of(self.app)
    try:
        return deliver(settings, delivery_id)
    except (DeliveryError, OSError, OperationalError) as e:
        final = self.request.retries >= DELIVERY_ATTEMPTS - 1
        give_up(settings, delivery_id, str(e), final)
        if final:
            log.warning("delivery %d given up after %d attempts: %s", delivery_id, DELIVERY_ATTEMPTS, e)
            return "failed"
        raise self.retry(exc=e, countdown=delivery_countdown(self.request.retries)) from e
