"""The trainer's dataset tasks: thin calls into trainer.dataset_validation and trainer.evaluation_holdout
(queue `training`)."""

from __future__ import annotations

from celery import Task, shared_task

from fracture.queue import SPLIT_DATASET_TASK, VALIDATE_DATASET_TASK, settings_of


@shared_task(name=VALIDATE_DATASET_TASK, bind=True, acks_late=True)
def validate(self: Task, dataset_id: int) -> str:
    """Validate dataset `dataset_id` and record its report (or why it is invalid)."""
    from trainer.dataset_validation import validate_dataset

    return validate_dataset(settings_of(self.app), dataset_id)


@shared_task(name=SPLIT_DATASET_TASK, bind=True, acks_late=True)
def split(self: Task, parent_id: int, training_id: int, evaluation_id: int, fraction: float, seed: int) -> None:
    """Split dataset `parent_id` into its two recorded parts, then validate them."""
    from trainer.evaluation_holdout import split_dataset

    split_dataset(settings_of(self.app), parent_id, training_id, evaluation_id, fraction, seed)
