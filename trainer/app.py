"""Entry module for the training worker: `celery -A trainer.app worker -Q training`."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from fracture import logs
from fracture.queue import make_app

logs.use_in_celery("trainer")  # LOG_FORMAT's lines, with each task's run, evaluation or dataset id
app = make_app(include=["trainer.training_tasks", "trainer.evaluation_tasks", "trainer.dataset_tasks"])


@worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    """A forked pool child must not reuse the parent's pooled database connections."""
    from fracture.db import dispose_engines

    dispose_engines()
