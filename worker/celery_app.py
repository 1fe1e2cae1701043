"""The Celery application factory: broker, queues, routes, limits and the beat schedule in one place."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import worker_process_init

from fracture.config import Settings, get_settings

if TYPE_CHECKING:
    from flask import Flask

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

TASK_ROUTES = {
    "inference.*": {"queue": INFERENCE_QUEUE},
    "training.*": {"queue": TRAINING_QUEUE},
    # Small and quick: the inference worker is always running, so it takes these too.
    "schedules.*": {"queue": INFERENCE_QUEUE},
    "maintenance.*": {"queue": INFERENCE_QUEUE},
}


class _TimeLimits:
    """Task annotation giving inference and maintenance tasks a hard time limit (training sets its own)."""

    def __init__(self, hard_s: int) -> None:
        self.hard_s = hard_s

    def annotate(self, task: Task) -> dict[str, Any] | None:
        if task.name.startswith(("inference.", "schedules.", "maintenance.")):
            # The soft limit raises inside the task first, so it can record why before the hard kill.
            return {"time_limit": self.hard_s, "soft_time_limit": soft_time_limit(self.hard_s)}
        return None


def soft_time_limit(hard_s: int) -> int:
    """The soft limit that goes with a hard one: 15 s earlier (half of it for very short limits)."""
    return max(1, hard_s - 15 if hard_s > 30 else hard_s // 2)


def _task_modules() -> list[str]:
    """worker.tasks always; trainer.tasks once the trainer ships it."""
    modules = ["worker.tasks"]
    if importlib.util.find_spec("trainer.tasks") is not None:
        modules.append("trainer.tasks")
    return modules


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


def make_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    if settings.embedded_broker:
        from worker import embedded_broker

        embedded_broker.install()
    app = Celery("fracture", broker=settings.broker_url, include=_task_modules())
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
        task_annotations=[_TimeLimits(settings.task_time_limit_s)],
        task_serializer="json",
        accept_content=["json"],
        worker_max_memory_per_child=settings.worker_max_memory_kb,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options=_transport_options(settings),
        beat_schedule={
            "schedules-tick": {"task": "schedules.tick", "schedule": 60.0},
            # Re-enqueue what the broker lost, fail what died; cheap when there is nothing to do.
            "maintenance-reap": {"task": "maintenance.reap", "schedule": float(settings.reaper_interval_s)},
        },
        timezone="UTC",
        enable_utc=True,
    )
    app.conf.fracture_settings = settings
    return app


def settings_of(app: Celery) -> Settings:
    """The Settings an app was made with (tasks read them here, not from module globals)."""
    settings = app.conf.get("fracture_settings")
    return settings if isinstance(settings, Settings) else get_settings()


@worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    """A forked pool child must not reuse the parent's pooled database connections."""
    import os

    from fracture.db import dispose_engines

    dispose_engines()
    # Several pool children on few cores: each gets its share of threads, not all of them (oversubscribed
    # OpenMP threads spin against each other: 2 children x 2 threads on 2 cores ran slower than one child).
    threads = os.environ.get("TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))


def celery_init_app(flask_app: Flask, settings: Settings | None = None) -> Celery:
    """Make a Celery app bound to `flask_app` (tasks run in its app context) and register it."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    if settings is None:
        configured = flask_app.config.get("FRACTURE_SETTINGS")
        settings = configured if isinstance(configured, Settings) else get_settings()
    app = make_celery(settings)
    app.Task = FlaskTask  # type: ignore[misc]
    app.set_default()
    flask_app.extensions["celery"] = app
    return app
