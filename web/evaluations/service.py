"""Start an evaluation: record the row, commit, then send `evaluations.run` by name to the trainer's queue."""

from __future__ import annotations

from fracture import evaluations, queue
from fracture.models import Evaluation
from web.context import celery, db


def start(version_id: int, dataset_id: int, split: str | None, audit: bool = False) -> Evaluation:
    """Record a queued evaluation, commit, and send it to the trainer; EvaluationError or BrokerUnavailable."""
    session = db()
    evaluation = evaluations.create_evaluation(session, version_id, dataset_id, split, audit)
    session.commit()

    def fail() -> None:
        evaluations.fail_evaluation(session, evaluation.id, evaluations.BROKER_DOWN)
        session.commit()

    queue.send_or_mark(lambda: queue.send_trainer_task(celery(), queue.EVALUATE_TASK, evaluation.id), fail,
                       evaluation, evaluations.BROKER_DOWN)
    return evaluation
