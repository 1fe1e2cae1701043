"""The inference worker's Celery app: the core's shared configuration plus time limits, memory cap and beat."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from fracture.config import Settings, get_settings
from fracture.queue import REAP_TASK, SCHEDULES_TICK_TASK, make_app

TIME_LIMITED = ("inference.", "schedules.", "maintenance.")


class _TimeLimits:
    """Task annotation giving inference and maintenance tasks a hard time limit (training sets its own)."""

    def __init__(self, hard_s: int) -> None:
        self.hard_s = hard_s

    def annotate(self, task: Task) -> dict[str, Any] | None:
        if task.name.startswith(TIME_LIMITED):
            # The soft limit raises inside the task first, so it can record why before the hard kill.
            return {"time_limit": self.hard_s, "soft_time_limit": soft_time_limit(self.hard_s)}
        return None


def soft_time_limit(hard_s: int) -> int:
    """The soft limit that goes with a hard one: 15 s earlier (half of it for very short limits)."""
    return max(1, hard_s - 15 if hard_s > 30 else hard_s // 2)


def make_celery(settings: Settings | None = None) -> Celery:
    """Build the worker's Celery app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    app = make_app(settings, include=["worker.tasks"])
    app.conf.update(
        task_annotations=[_TimeLimits(settings.task_time_limit_s)],
        worker_max_memory_per_child=settings.worker_max_memory_kb,
        beat_schedule={
            "schedules-tick": {"task": SCHEDULES_TICK_TASK, "schedule": float(settings.schedules_tick_s)},
            # Re-enqueue what the broker lost, fail what died; cheap when there is nothing to do.
            "maintenance-reap": {"task": REAP_TASK, "schedule": float(settings.reaper_interval_s)},
        },
    )
    return app


@worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    """Set up a forked pool child: fresh database connections, its share of threads, the active model loaded."""
    from fracture.db import dispose_engines

    dispose_engines()
    # Several pool children on few cores: each gets its share of threads, not all of them (oversubscribed
    # OpenMP threads spin against each other: 2 children x 2 threads on 2 cores ran slower than one child).
    threads = os.environ.get("TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    # Load the active model now, in this child (never in the prefork parent: CUDA does not survive a fork), so the
    # first chunk of a just-started worker runs as fast as later ones; a failure leaves it to the first chunk.
    from celery import current_app

    from fracture.queue import settings_of
    from worker.classify import start_warm_up

    start_warm_up(settings_of(current_app))
