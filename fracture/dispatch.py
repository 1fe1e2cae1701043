"""Send a job's images to the inference queue in chunks, and ask whether the broker and workers are up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select

from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import Image, Job, JobStatus, Result, TrainingRun

if TYPE_CHECKING:
    from celery import Celery

CLASSIFY_TASK = "inference.classify_chunk"
RETRAIN_TASK = "training.retrain"
INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
BROKER_TIMEOUT_S = 3.0
BROKER_DOWN_MESSAGE = (
    "The job was saved but the task queue (broker) is unavailable, so it has not started yet; "
    "it stays queued and is dispatched when the broker is back."
)


class BrokerUnavailable(RuntimeError):
    """The message broker could not be reached; nothing (or not everything) was queued."""


def chunked(items: list[int], size: int) -> list[list[int]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _pending_images(settings: Settings, job_id: str) -> list[int]:
    """Record ingest errors as results, refresh the job's progress, and return the images still to classify."""
    from worker.results import Row, lock_job, refresh_progress, upsert_results

    with session_scope(settings.database_url) as session:
        job = lock_job(session, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.status in JobStatus.FINAL:
            return []
        images = session.execute(
            select(Image.id, Image.ingest_error).where(Image.job_id == job_id).order_by(Image.seq)
        ).all()
        refused = [Row(i, error=err) for i, err in images if err]
        upsert_results(session, job_id, job.model_version_id, refused, overwrite=False)
        done = set(
            session.scalars(
                select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == job.model_version_id)
            )
        )
        refresh_progress(session, job)
        return [i for i, err in images if not err and i not in done]


def _ensure_broker(celery_app: Celery) -> None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=BROKER_TIMEOUT_S)
    except (KombuOperationalError, OSError, TimeoutError) as e:
        raise BrokerUnavailable(f"the message broker is not reachable: {e}") from e


def enqueue_job(celery_app: Celery, settings: Settings, job_id: str) -> int:
    """Queue every image of `job_id` still without a result, in chunks of settings.chunk_size; return the count.

    Images refused at ingest get their error Result here. Raises BrokerUnavailable quickly if the broker
    is down; sending a chunk twice is harmless (chunks are idempotent), so a retry may simply call again.
    """
    pending = _pending_images(settings, job_id)
    chunks = chunked(pending, settings.chunk_size)
    if chunks:
        _ensure_broker(celery_app)
        try:
            with celery_app.producer_or_acquire() as producer:
                for chunk in chunks:
                    celery_app.send_task(
                        CLASSIFY_TASK, args=(job_id, chunk), queue=INFERENCE_QUEUE, producer=producer, retry=False
                    )
        except (KombuOperationalError, OSError) as e:
            raise BrokerUnavailable(f"the message broker is not reachable: {e}") from e
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.enqueued_at = datetime.now(UTC)
            if job.error == BROKER_DOWN_MESSAGE:
                job.error = None
    return len(chunks)


def resume_unfinished(celery_app: Celery, settings: Settings) -> dict[str, Any]:
    """Queue again what a restarted system's broker no longer holds: unfinished jobs and queued training runs.

    Meant for `fracture up`, whose broker starts empty; on a shared broker it only adds harmless duplicates.
    """
    with session_scope(settings.database_url) as session:
        jobs = session.scalars(
            select(Job.id).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))).order_by(Job.created_at)
        ).all()
        runs = session.scalars(select(TrainingRun.id).where(TrainingRun.status == "queued")).all()
    chunks = sum(enqueue_job(celery_app, settings, job_id) for job_id in jobs)
    for run_id in runs:
        celery_app.send_task(RETRAIN_TASK, args=(run_id,), queue=TRAINING_QUEUE, retry=False)
    return {"jobs": list(jobs), "chunks": chunks, "training_runs": list(runs)}


def broker_ping(celery_app: Celery) -> bool:
    """Whether the broker accepts a connection within a few seconds."""
    try:
        _ensure_broker(celery_app)
    except BrokerUnavailable:
        return False
    return True


def worker_ping(celery_app: Celery, timeout: float = 1.0) -> dict[str, Any]:
    """Ask the workers to answer: `{"supported": bool, "workers": [hostname, ...]}`.

    The embedded SQLite broker has no broadcast, so workers cannot be asked there: supported is False.
    """
    if str(celery_app.conf.broker_url or "").startswith(("sqla+", "sqlalchemy+")):
        return {"supported": False, "workers": []}
    try:
        replies = celery_app.control.ping(timeout=timeout) or []
    except (KombuOperationalError, OSError) as e:
        return {"supported": True, "workers": [], "error": str(e)}
    return {"supported": True, "workers": sorted(name for reply in replies for name in reply)}
