"""The trainer's Celery task: a thin call into trainer.training_run on queue `training`."""

from __future__ import annotations

from celery import Task, shared_task

from fracture.queue import RETRAIN_TASK, settings_of


@shared_task(name=RETRAIN_TASK, bind=True, acks_late=True, time_limit=None, soft_time_limit=None)
def retrain(self: Task, run_id: int) -> int | None:
    """Train, evaluate and register a model version for TrainingRun `run_id`."""
    from trainer.training_run import run_training

    return run_training(settings_of(self.app), run_id)
