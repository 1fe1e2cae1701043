"""Celery task of the trainer: a thin call into trainer.service on queue `training`."""

from __future__ import annotations

from celery import shared_task

from fracture.config import get_settings


@shared_task(name="training.retrain", acks_late=True, time_limit=None, soft_time_limit=None)
def retrain(run_id: int) -> int | None:
    """Train, evaluate and register a model version for TrainingRun `run_id`."""
    from trainer.service import run_training

    return run_training(get_settings(), run_id)
