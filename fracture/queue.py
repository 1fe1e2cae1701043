"""The queue's contract: broker, queue and task names, the Celery app's shared configuration, and the producer.

Web, launcher and reaper send tasks through here, by name; the consumers (worker/, trainer/) build their
apps on `make_app` and hold only the task bodies. The database is the source of truth: the broker carries ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fracture import evaluations, jobs, trainings
from fracture.config import Settings, get_settings
from fracture.db import session_scope

INFERENCE_QUEUE = "inference"
# What a person is waiting on (a heatmap asked for in the viewer). The inference workers consume it beside
# "inference" and take from the two in turn, so such a request waits for the chunk in progress, not for every
# chunk queued before it.
INTERACTIVE_QUEUE = "interactive"
INFERENCE_WORKER_QUEUES = f"{INFERENCE_QUEUE},{INTERACTIVE_QUEUE}"  # a worker's -Q
TRAINING_QUEUE = "training"
CLASSIFY_TASK = "inference.classify_chunk"
HEATMAP_TASK = "inference.heatmap"
RETRAIN_TASK = "training.retrain"
VALIDATE_DATASET_TASK = "datasets.validate"
SPLIT_DATASET_TASK = "datasets.split"
EVALUATE_TASK = "evaluations.run"
SCHEDULES_TICK_TASK = "schedules.tick"
REAP_TASK = "maintenance.reap"
# A DICOM job's results back to the PACS: build the objects once, then one task per (peer, object) with retries.
REPORT_TASK = "dicom.report"
CAPTURES_TASK = "dicom.captures"
DELIVER_TASK = "dicom.deliver"
TASK_ROUTES = {
    "dicom.*": {"queue": INFERENCE_QUEUE},
    "inference.*": {"queue": INFERENCE_QUEUE},
    "training.*": {"queue": TRAINING_QUEUE},
    # They read whole datasets with the trainer's code (audit, metrics, plots): the trainer's worker runs them.
    "datasets.*": {"queue": TRAINING_QUEUE},
    "evaluations.*": {"queue": TRAINING_QUEUE},
    # Small and quick: the inference workers are always running, so they take these too, from the queue they
    # take in turn with chunks: behind a backlog of thousands of chunks, the reaper still runs within a chunk's
    # time (a killed trainer's run is failed within a minute) and a due schedule still starts on time.
    "schedules.*": {"queue": INTERACTIVE_QUEUE},
    "maintenance.*": {"queue": INTERACTIVE_QUEUE},
}
BROKER_TIMEOUT_S = 3.0
log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The message broker could not be reached; nothing (or not everything) was queued.

    The one exception for "the broker is down". Raised by `send_or_mark`, it carries the `subject` (the job, run,
    evaluation or dataset recorded as not sent, when the caller named one) and the sentence to show about it.
    """

    def __init__(self, message: str, subject: object = None) -> None:
        super().__init__(message)
        self.subject = subject


# The transport's "cannot talk to the broker" errors: kombu's, the socket's (TimeoutError is an OSError) and
# redis-py's, which kombu lets through from a pooled connection the server closed (a restarted redis).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, OSError, RedisConnectionError,
                                                      RedisTimeoutError)


@contextmanager
def broker_errors() -> Iterator[None]:
    """Turn the transport's connection errors into BrokerUnavailable."""
    try:
        yield
    except CONNECTION_ERRORS as e:
        raise BrokerUnavailable(f"the message broker is not reachable: {e}") from e


def send_or_mark(send: Callable[[], object], mark_unsent: Callable[[], object], subject: object = None,
                 message: str | None = None) -> None:
    """Call `send`; if the broker is down, call `mark_unsent` (record on the row why it was not sent) and raise
    BrokerUnavailable carrying `subject` and `message` (default: the broker's error).

    A committed row and its message: the row is the truth, so a message that cannot be sent leaves the row saying
    so (a job marked not dispatched for the reaper, a run or evaluation failed, a dataset invalid).
    """
    try:
        send()
    except BrokerUnavailable as e:
        mark_unsent()
        raise BrokerUnavailable(message or str(e), subject) from e


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded_broker:
        # Handed to create_engine by kombu's SQLAlchemy transport: wait on SQLite's lock, not fail.
        return {"connect_args": {"timeout": 30}}
    vt = settings.visibility_timeout_s
    return {
        "visibility_timeout": vt,
        # Sweep for tasks of dead workers often enough to notice them soon after the timeout passes.
        "unacked_restore_interval": max(1, min(60, vt // 10)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,
    }


def make_app(settings: Settings | None = None, include: list[str] | None = None) -> Celery:
    """A Celery app for `settings` (default: the environment) configured as producers and consumers share it."""
    settings = settings or get_settings()
    if settings.embedded_broker:
        from fracture import embedded_broker

        embedded_broker.install()
    app = Celery("fracture", broker=settings.broker_url, include=include or [])
    app.conf.update(
        # Job status lives in the database; there is no result backend.
        task_ignore_result=True,
        result_backend=None,
        # Chunks are idempotent upserts, so a task may safely run twice but must never be lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes=TASK_ROUTES,
        task_default_queue=INFERENCE_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options=_transport_options(settings),
        timezone="UTC",
        enable_utc=True,
    )
    app.conf.fracture_settings = settings
    return app


def settings_of(app: Celery) -> Settings:
    """The Settings an app was made with (tasks read them here, not from module globals)."""
    settings = app.conf.get("fracture_settings")
    return settings if isinstance(settings, Settings) else get_settings()


# ---------------------------------------------------------------- the producer


def chunked(items: list[int], size: int) -> list[list[int]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ensure_broker(app: Celery) -> None:
    with broker_errors(), app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=BROKER_TIMEOUT_S)


def enqueue_job(app: Celery, settings: Settings, job_id: str) -> int:
    """Queue every image of `job_id` still without a result, in chunks of settings.chunk_size; return the count.

    Images refused at ingest get their error result here. Raises BrokerUnavailable quickly if the broker is
    down; sending a chunk twice is harmless (chunks are idempotent), so a retry may simply call again.
    """
    with session_scope(settings.database_url) as session:
        pending = jobs.pending_images(session, job_id)
    chunks = chunked(pending, settings.chunk_size)
    if chunks:
        _ensure_broker(app)
        with broker_errors(), app.producer_or_acquire() as producer:
            for chunk in chunks:
                app.send_task(CLASSIFY_TASK, args=(job_id, chunk), queue=INFERENCE_QUEUE, producer=producer,
                              retry=False)
    with session_scope(settings.database_url) as session:
        jobs.mark_dispatched(session, job_id)
    return len(chunks)


def dispatch_job(app: Celery, settings: Settings, job_id: str) -> None:
    """Hand a committed job to the broker; if it is down, record that on the job and raise BrokerUnavailable."""
    def mark_unsent() -> None:
        with session_scope(settings.database_url) as session:
            jobs.mark_not_dispatched(session, job_id)

    send_or_mark(lambda: enqueue_job(app, settings, job_id), mark_unsent)


def send_classify(app: Celery, job_id: str, image_ids: list[int]) -> None:
    """Send one chunk of a job to the inference queue (a worker splitting a chunk it could not finish)."""
    app.send_task(CLASSIFY_TASK, args=(job_id, image_ids), queue=INFERENCE_QUEUE)


def send_heatmap(app: Celery, job_id: str, image_id: int, version_id: int, check_broker: bool = True,
                 interactive: bool = True) -> None:
    """Send the heatmap of one image under one model version (its own task, so plain classification never waits on
    it): to the interactive queue when someone asked for it, else (HEATMAPS_ABOVE_THRESHOLD) to the inference queue
    behind the chunks. Raises BrokerUnavailable quickly if the broker is down."""
    queue = INTERACTIVE_QUEUE if interactive else INFERENCE_QUEUE
    if check_broker:
        _ensure_broker(app)
    with broker_errors():
        app.send_task(HEATMAP_TASK, args=(job_id, image_id, version_id), queue=queue, retry=False)


def send_report(app: Celery, job_id: str) -> None:
    """Ask for a final DICOM job's results to be built and sent to the PACS peers (safe to send twice)."""
    with broker_errors():
        app.send_task(REPORT_TASK, args=(job_id,), queue=INFERENCE_QUEUE, retry=False)


def send_captures(app: Celery, job_id: str) -> None:
    """Ask for a reported DICOM job's heatmap captures (after its SR's deliveries, so the SR goes out first)."""
    with broker_errors():
        app.send_task(CAPTURES_TASK, args=(job_id,), queue=INFERENCE_QUEUE, retry=False)


def send_delivery(app: Celery, delivery_id: int, countdown: float = 0) -> None:
    """Send one delivery (an SR or a capture to one peer) to the worker."""
    with broker_errors():
        app.send_task(DELIVER_TASK, args=(delivery_id,), queue=INFERENCE_QUEUE, retry=False, countdown=countdown)


def send_retrain(app: Celery, run_id: int) -> None:
    """Send a committed training run to the trainer's queue; raises BrokerUnavailable if the broker is down."""
    with broker_errors():
        app.send_task(RETRAIN_TASK, args=(run_id,), queue=TRAINING_QUEUE, retry=False)


def send_trainer_task(app: Celery, name: str, *args: object) -> None:
    """Send a task of the trainer's queue (dataset validation or split, evaluation) with plain arguments."""
    with broker_errors():
        app.send_task(name, args=args, queue=TRAINING_QUEUE, retry=False)


def resume_unfinished(app: Celery, settings: Settings) -> dict[str, Any]:
    """Queue again what a restarted system's broker no longer holds: unfinished jobs, queued runs and evaluations.

    Meant for `fracture up`, whose broker starts empty; on a shared broker it only adds harmless duplicates
    (an evaluation that already ended ignores a second message).
    """
    with session_scope(settings.database_url) as session:
        job_ids = jobs.unfinished_job_ids(session)
        run_ids = trainings.queued_run_ids(session)
        evaluation_ids = evaluations.queued_evaluation_ids(session)
    chunks = sum(enqueue_job(app, settings, job_id) for job_id in job_ids)
    for run_id in run_ids:
        send_retrain(app, run_id)
    for evaluation_id in evaluation_ids:
        send_trainer_task(app, EVALUATE_TASK, evaluation_id)
    return {"jobs": job_ids, "chunks": chunks, "training_runs": run_ids, "evaluations": evaluation_ids}


# ---------------------------------------------------------------- health


def broker_ping(app: Celery) -> bool:
    """Whether the broker accepts a connection within a few seconds."""
    try:
        _ensure_broker(app)
    except BrokerUnavailable:
        return False
    return True


def worker_ping(app: Celery, timeout: float = 1.0) -> dict[str, Any]:
    """Ask the workers to answer: `{"supported": bool, "workers": [hostname, ...]}`.

    The embedded SQLite broker has no broadcast, so workers cannot be asked there: supported is False.
    """
    if str(app.conf.broker_url or "").startswith(("sqla+", "sqlalchemy+")):
        return {"supported": False, "workers": []}
    for attempt in range(2):
        try:
            replies = app.control.ping(timeout=timeout) or []
            break
        except CONNECTION_ERRORS as e:
            # A pooled connection the broker closed (it restarted) fails once; the next one is fresh.
            if attempt:
                return {"supported": True, "workers": [], "error": str(e)}
    return {"supported": True, "workers": sorted(name for reply in replies for name in reply)}


def queued_messages(app: Celery, queue: str = INFERENCE_QUEUE) -> int | None:
    """Messages waiting in `queue` (not those a worker holds); None when it cannot be asked."""
    from kombu.exceptions import ChannelError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        return 0  # the queue does not exist: nothing waits in it (a flushed redis)
    except Exception as e:  # noqa: BLE001  (any transport error: just not known)
        log.warning("cannot read the length of queue %s: %s", queue, e)
        return None
