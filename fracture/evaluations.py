"""The state of evaluations (a model version measured on a registered dataset): the only code that writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fracture import heartbeats
from fracture.models import FINAL_RUN_STATUSES, Dataset, DatasetStatus, Evaluation, ModelVersion, RunStatus

SPLIT_CHOICES = ("train", "val", "test")
BROKER_DOWN = "the task queue was unavailable, so the evaluation was never started"


class EvaluationError(ValueError):
    """An evaluation cannot be made as asked; the message says why."""


class DatasetNotReady(EvaluationError):
    """The dataset exists but cannot be read yet (validating) or at all (invalid)."""


def create_evaluation(session: Session, version_id: int, dataset_id: int, split: str | None = None,
                      audit: bool = False) -> Evaluation:
    """Add a queued evaluation (flushed, not committed: the caller commits, then sends `evaluations.run`)."""
    if session.get(ModelVersion, version_id) is None:
        raise EvaluationError(f"no model version with id {version_id}")
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise EvaluationError(f"no dataset with id {dataset_id}")
    if dataset.status != DatasetStatus.READY:
        raise DatasetNotReady(f"dataset {dataset.name!r} is {dataset.status}, not ready")
    if split is not None and split not in SPLIT_CHOICES:
        raise EvaluationError(f"split must be one of {', '.join(SPLIT_CHOICES)} (or none for all of it)")
    evaluation = Evaluation(model_version_id=version_id, dataset_id=dataset_id, split=split, audit=audit,
                            status=RunStatus.QUEUED)
    session.add(evaluation)
    session.flush()
    return evaluation


def start_evaluation(session: Session, evaluation_id: int) -> Evaluation | None:
    """Move an evaluation to running; None when it already ended (a redelivered task)."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise LookupError(f"evaluation {evaluation_id} does not exist")
    if evaluation.status in FINAL_RUN_STATUSES:
        return None
    evaluation.status, evaluation.started_at, evaluation.error = RunStatus.RUNNING, datetime.now(UTC), None
    evaluation.heartbeat_at = evaluation.started_at
    return evaluation


def beat_evaluation(session: Session, evaluation_id: int, now: datetime | None = None) -> None:
    """Record that the trainer measuring `evaluation_id` is alive (while the evaluation is `running`)."""
    session.execute(update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.status == RunStatus.RUNNING)
                    .values(heartbeat_at=now or datetime.now(UTC)))


def finish_evaluation(session: Session, evaluation_id: int, metrics: dict[str, Any], plots: dict[str, str]) -> None:
    """Record an evaluation's metrics and stored plots."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is not None:
        evaluation.status, evaluation.finished_at = RunStatus.DONE, datetime.now(UTC)
        evaluation.metrics, evaluation.plots = metrics, plots


def fail_evaluation(session: Session, evaluation_id: int, reason: str, now: datetime | None = None) -> None:
    """End an evaluation as failed with one readable sentence."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is not None:
        evaluation.status, evaluation.finished_at, evaluation.error = RunStatus.FAILED, now or datetime.now(UTC), reason


def fail_dead_evaluations(session: Session, now: datetime, heartbeat_stale_s: int) -> list[int]:
    """Mark failed the evaluations still `running` whose trainer stopped beating; return their ids."""
    failed = []
    for evaluation in session.scalars(select(Evaluation).where(Evaluation.status == RunStatus.RUNNING)):
        reason = heartbeats.stopped_worker(evaluation.heartbeat_at or evaluation.started_at, now, heartbeat_stale_s)
        if reason is not None:
            fail_evaluation(session, evaluation.id, f"{reason}; evaluate again", now)
            failed.append(evaluation.id)
    return failed


def evaluations_of(session: Session, version_id: int) -> list[Evaluation]:
    """Every evaluation of a version, newest first."""
    return list(session.scalars(
        select(Evaluation).where(Evaluation.model_version_id == version_id).order_by(Evaluation.created_at.desc())
    ))


def queued_evaluation_ids(session: Session) -> list[int]:
    """Evaluations still waiting for the trainer, oldest first."""
    return list(session.scalars(
        select(Evaluation.id).where(Evaluation.status == RunStatus.QUEUED).order_by(Evaluation.created_at)
    ))


def evaluations_with_names(
    session: Session, version_id: int | None = None, limit: int = 500,
) -> list[tuple[Evaluation, str, str]]:
    """Evaluations, newest first, each with its version's and dataset's names (of one version, or of all)."""
    stmt = (select(Evaluation, ModelVersion.name, Dataset.name)
            .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
            .join(Dataset, Dataset.id == Evaluation.dataset_id)
            .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit))
    if version_id is not None:
        stmt = stmt.where(Evaluation.model_version_id == version_id)
    return [(e, v, d) for e, v, d in session.execute(stmt)]
