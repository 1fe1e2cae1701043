"""The trainer's evaluation task: a thin call into trainer.evaluate_dataset on queue `training`."""

from __future__ import annotations

from celery import Task, shared_task

from fracture.queue import EVALUATE_TASK, settings_of


@shared_task(name=EVALUATE_TASK, bind=True, acks_late=True, time_limit=None, soft_time_limit=None)
def run(self: Task, evaluation_id: int) -> bool:
    """Measure a model version on a dataset for Evaluation `evaluation_id`; True when it finished."""
    from trainer.evaluate_dataset import evaluate

    return evaluate(settings_of(self.app), evaluation_id)
