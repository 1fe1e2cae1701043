"""What `/metrics` exposes (Prometheus text format): the system's state computed at scrape time from the database
and the broker, the one source of truth every web process shares, so any gunicorn process answers the same and no
multiprocess bookkeeping is needed for these series."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fracture import latency, queue
from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import (
    Delivery,
    Evaluation,
    Image,
    Job,
    ModelStatus,
    ModelVersion,
    Result,
    RunStatus,
    TrainingRun,
)

if TYPE_CHECKING:
    from celery import Celery

QUEUES = (queue.INFERENCE_QUEUE, queue.INTERACTIVE_QUEUE, queue.TRAINING_QUEUE)


def _by(session: Session, column: Any) -> dict[str, int]:
    return {str(k): int(n) for k, n in session.execute(select(column, func.count()).group_by(column))}


class SystemCollector(Collector):
    """One scrape: jobs, images, runs, evaluations, schedules' runs, deliveries, the active model, queues, workers."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings, self.app = settings, app

    def collect(self) -> Iterator[Any]:
        with session_scope(self.settings.database_url) as session:
            yield from self._database(session)
        depth = GaugeMetricFamily("fracture_queue_messages", "Messages waiting in a queue (-1: cannot be read)",
                                  labels=["queue"])
        for name in QUEUES:
            waiting = queue.queued_messages(self.app, name)
            depth.add_metric([name], -1 if waiting is None else waiting)
        yield depth
        ping = queue.worker_ping(self.app)
        workers = GaugeMetricFamily("fracture_workers_up", "Workers that answered a ping (-1: the broker cannot ask)")
        workers.add_metric([], len(ping["workers"]) if ping.get("supported") else -1)
        yield workers

    def _database(self, session: Session) -> Iterator[Any]:
        jobs = GaugeMetricFamily("fracture_jobs", "Jobs by status", labels=["status"])
        for status, n in _by(session, Job.status).items():
            jobs.add_metric([status], n)
        yield jobs
        classified = session.scalar(select(func.count(Result.id)).where(Result.prediction.is_not(None))) or 0
        failed = (session.scalar(select(func.count(Result.id)).where(Result.error.is_not(None))) or 0) + (
            session.scalar(select(func.count(Image.id)).where(Image.ingest_error.is_not(None))) or 0)
        flagged = session.scalar(select(func.count(Result.id)).where(Result.in_distribution.is_(False))) or 0
        yield CounterMetricFamily("fracture_images_classified", "Images given a prediction", value=classified)
        yield CounterMetricFamily("fracture_images_failed", "Images that could not be classified", value=failed)
        yield CounterMetricFamily("fracture_images_out_of_distribution",
                                  "Images the detector flagged as unlike the training data", value=flagged)
        runs = GaugeMetricFamily("fracture_training_runs", "Training runs by status", labels=["status"])
        for status, n in _by(session, TrainingRun.status).items():
            runs.add_metric([status], n)
        yield runs
        last = session.execute(
            select(ModelVersion.selection_metric).join(TrainingRun, TrainingRun.model_version_id == ModelVersion.id)
            .where(TrainingRun.status == RunStatus.DONE).order_by(TrainingRun.finished_at.desc()).limit(1)).scalar()
        if last is not None:
            yield GaugeMetricFamily("fracture_training_last_val_auc", "The last finished run's val ROC-AUC",
                                    value=float(last))
        evaluations = GaugeMetricFamily("fracture_evaluations", "Evaluations by status", labels=["status"])
        for status, n in _by(session, Evaluation.status).items():
            evaluations.add_metric([status], n)
        yield evaluations
        fired = session.scalar(select(func.count(TrainingRun.id)).where(TrainingRun.schedule_id.is_not(None))) or 0
        yield CounterMetricFamily("fracture_schedule_firings", "Training runs started by a schedule", value=fired)
        sent = GaugeMetricFamily("fracture_pacs_deliveries", "Deliveries to PACS peers by peer and status",
                                 labels=["peer", "status"])
        for peer, status, n in session.execute(select(Delivery.peer, Delivery.status, func.count())
                                               .group_by(Delivery.peer, Delivery.status)):
            sent.add_metric([str(peer), str(status)], int(n))
        yield sent
        active = session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)).first()
        model = InfoMetricFamily("fracture_active_model", "The active model version")
        if active is not None:
            model.add_metric([], {"name": active.name, "arch": active.arch, "threshold": f"{active.threshold:.6g}"})
        yield model
        yield from latency.families(session)  # chunk, image and job seconds: counted in the database by whoever ran
