"""Start an evaluation: record the row, commit, then send `evaluations.run` by name to the trainer's queue."""

from __future__ import annotations

from fracture import evaluations, queue
from fracture.models import Evaluation
from web.context import celery, db


class NotSent(RuntimeError):
    """The evaluation was recorded but the broker was down: it is failed with that reason."""

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__(evaluations.BROKER_DOWN)
        self.evaluation = evaluation


def start(version_id: int, dataset_id: int, split: str | None, audit: bool = False) -> Evaluation:
    """Record a queued evaluation, commit, and send it to the trainer; EvaluationError or NotSent otherwise."""
    session = db()
    evaluation = evaluations.create_evaluation(session, version_id, dataset_id, split, audit)
    session.commit()
    try:
        queue.send_trainer_task(celery(), queue.EVALUATE_TASK, evaluation.id)
    except queue.BrokerUnavailable:
        evaluations.fail_evaluation(session, evaluation.id, evaluations.BROKER_DOWN)
        session.commit()
        raise NotSent(evaluation) from None
    return evaluation
