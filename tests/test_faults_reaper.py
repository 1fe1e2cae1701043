"""The reaper's rules, one pass at a time against real redis: what it re-enqueues, what it leaves alone, and what it
fails when a real trainer worker is killed mid-task (heartbeats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from harness import Proc, WorkerFactory, wait_for
from installation import create_job, job_state, materialize
from sqlalchemy import select

from fracture import datasets, evaluations, trainings
from fracture.config import Settings, get_settings
from fracture.db import session_scope
from fracture.deliveries import claim_report, plan
from fracture.jobs import BROKER_DOWN_MESSAGE
from fracture.models import Dataset, Evaluation, Job, JobSource, ModelVersion, TrainingRun
from fracture.queue import (
    EVALUATE_TASK,
    VALIDATE_DATASET_TASK,
    enqueue_job,
    queued_messages,
    send_retrain,
    send_trainer_task,
)
from fracture.storage import Storage
from worker.celery_app import make_celery
from worker.reaper import ReapReport, reap


def _later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_a_job_saved_while_the_broker_was_down_is_dispatched_and_its_reason_cleared(
    fracture_env: dict[str, str], redis_url: str, sample_images: list[Path]
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "2"}
    settings = get_settings(env)
    app = make_celery(settings)
    job_id = create_job(env, sample_images[:4])
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.error = BROKER_DOWN_MESSAGE

    assert reap(app, settings).dispatched == []  # the web may be dispatching it right now
    report = reap(app, settings, now=_later(60))
    assert report.dispatched == [job_id] and report.chunks == 2
    assert job_state(env, job_id)["error"] is None
    assert queued_messages(app) == 2


def test_a_stale_job_waits_while_the_queue_is_busy(
    fracture_env: dict[str, str], redis_url: str, sample_images: list[Path]
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "2", "REAPER_STALE_S": "1"}
    settings = get_settings(env)
    app = make_celery(settings)
    job_id = create_job(env, sample_images[:4])
    enqueue_job(app, settings, job_id)  # no worker: its chunks just wait in the queue

    report = reap(app, settings, now=_later(5))
    assert report.requeued == [] and report.waiting_on_queue == 2  # a long queue is not a lost one
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    assert queued_messages(app) == 0
    assert reap(app, settings, now=_later(5)).requeued == [job_id]


def test_dead_training_runs_fail_and_only_stale_orphan_uploads_are_removed(fracture_env: dict[str, str]) -> None:
    env = {**fracture_env, "TRAINING_TIME_LIMIT_S": "60", "REAPER_STALE_S": "30", "HEARTBEAT_STALE_S": "100",
           "REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing to dispatch, so the broker is never asked
    settings = get_settings(env)
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        dead = TrainingRun(status="running", started_at=now - timedelta(seconds=120))
        alive = TrainingRun(status="running", started_at=now - timedelta(seconds=10))
        queued = TrainingRun(status="queued")
        session.add_all([dead, alive, queued])
        session.flush()
        ids = dead.id, alive.id, queued.id
    storage = Storage(settings.storage_dir)
    kept_job = create_job(env, [])
    for key in ("uploads/" + "a" * 32 + "/000001", f"uploads/{kept_job}/000001"):
        storage.write_bytes(key, b"x")

    first = reap(make_celery(settings), settings)
    assert first.failed_runs == [ids[0]]  # 120 s > limit 60 s + stale 30 s (and no beat for 100 s); the other 10 s in
    assert first.removed_uploads == []  # fresh: maybe still being stored
    report = reap(make_celery(settings), settings, now=now + timedelta(seconds=60))
    assert report.failed_runs == []
    assert report.removed_uploads == ["a" * 32]
    assert storage.exists(f"uploads/{kept_job}/000001")
    with session_scope(settings.database_url) as session:
        statuses = [session.get(TrainingRun, i).status for i in ids]  # type: ignore[union-attr]
        error = session.get(TrainingRun, ids[0]).error  # type: ignore[union-attr]
    assert statuses == ["failed", "running", "queued"]
    assert "trainer stopped without finishing" in str(error)


def test_beat_runs_the_reaper_every_reaper_interval(fracture_env: dict[str, str]) -> None:
    app = make_celery(get_settings({**fracture_env, "REAPER_INTERVAL_S": "45"}))
    app.loader.import_default_modules()
    entry = app.conf.beat_schedule["maintenance-reap"]
    assert (entry["task"], entry["schedule"]) == ("maintenance.reap", 45.0)
    assert "maintenance.reap" in app.tasks
    # Beside the heatmaps a reader waits for, not behind the chunks: a backlog must not delay the reaper.
    assert app.amqp.router.route({}, "maintenance.reap")["queue"].name == "interactive"


def test_a_dicom_job_that_ended_while_the_broker_was_down_is_reported_once(
    fracture_env: dict[str, str], redis_url: str, sample_images: list[Path]
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "REAPER_STALE_S": "1", "DICOM_PEERS": "PACS@127.0.0.1:104",
           "DICOM_SEND_RESULTS_TO": "PACS"}
    settings = get_settings(env)
    app = make_celery(settings)
    job_id, upload_id = create_job(env, sample_images[:2]), create_job(env, sample_images[2:3])
    with session_scope(settings.database_url) as session:
        for row in session.query(Job).filter(Job.id.in_([job_id, upload_id])):
            row.status, row.finished_at = "done", datetime.now(UTC)
            row.source = JobSource.DICOM if row.id == job_id else JobSource.UPLOAD

    assert reap(app, settings).reports == []  # it may be being reported right now
    assert reap(app, settings, now=_later(5)).reports == [job_id]  # the upload is never reported
    assert queued_messages(app) == 1
    with session_scope(settings.database_url) as session:
        assert claim_report(session, job_id) is True  # what the report task does first
        [lost] = plan(session, job_id, ["PACS"], [("report", "1.2.3.4", f"reports/{job_id}/1.2.3.4.dcm")])
    assert reap(app, settings, now=_later(5)).reports == []
    assert reap(app, settings, now=_later(5)).deliveries == []  # the queue still holds work: not lost yet
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    assert reap(app, settings, now=_later(5)).deliveries == [lost]  # recorded, never attempted: sent again
    assert queued_messages(app) == 1


def test_work_whose_trainer_stopped_beating_fails_with_the_reason_and_queued_work_waits(
    fracture_env: dict[str, str], tmp_path: Path,
) -> None:
    env = {**fracture_env, "HEARTBEAT_STALE_S": "30", "REDIS_URL": "redis://127.0.0.1:1/0"}
    settings = get_settings(env)
    now = datetime.now(UTC)
    old, fresh = now - timedelta(seconds=45), now - timedelta(seconds=5)
    with session_scope(settings.database_url) as session:
        version_id = session.scalars(select(ModelVersion.id)).first()
        runs = [TrainingRun(status="running", started_at=old, heartbeat_at=old),  # silent for 45 s: dead
                TrainingRun(status="running", started_at=old, heartbeat_at=fresh)]  # beating: a long epoch
        sets = [Dataset(name=f"d{i}", source="folder", root=str(tmp_path), status="validating", heartbeat_at=beat)
                for i, beat in enumerate((old, fresh, None))]  # dead, alive, still waiting in the queue
        session.add_all([*runs, *sets])
        session.flush()
        evals = [Evaluation(model_version_id=version_id, dataset_id=sets[0].id, status=status, started_at=old,
                            heartbeat_at=beat) for status, beat in (("running", old), ("running", fresh),
                                                                    ("queued", None))]
        session.add_all(evals)
        session.flush()
        run_ids, set_ids, eval_ids = [r.id for r in runs], [d.id for d in sets], [e.id for e in evals]

    report = reap(make_celery(settings), settings, now=now)
    assert report.failed_runs == run_ids[:1]
    assert report.failed_evaluations == eval_ids[:1]
    assert report.failed_validations == set_ids[:1]
    assert report.acted and report.as_dict()["failed_validations"] == set_ids[:1]
    with session_scope(settings.database_url) as session:
        run = [session.get_one(TrainingRun, i) for i in run_ids]
        evaluation = [session.get_one(Evaluation, i) for i in eval_ids]
        dataset = [session.get_one(Dataset, i) for i in set_ids]
        assert [r.status for r in run] == ["failed", "running"]
        assert [e.status for e in evaluation] == ["failed", "running", "queued"]
        assert [d.status for d in dataset] == ["invalid", "validating", "validating"]
        for error in (run[0].error, evaluation[0].error, dataset[0].error):
            assert "the worker running it stopped" in str(error) and "no sign of life for 45 s" in str(error)
        assert "evaluate again" in str(evaluation[0].error) and "validate it again" in str(dataset[0].error)
        # Validating it again queues it afresh: no heartbeat until a trainer takes it, so the reaper waits.
        datasets.restart_validation(session, set_ids[0])
    later = reap(make_celery(settings), settings, now=now + timedelta(hours=1))
    assert later.failed_validations == [set_ids[1]]  # the one that was beating has since gone silent too


# ---------------------------------------------------------------- a real trainer killed mid-task

FAST_BEATS = {"HEARTBEAT_INTERVAL_S": "1", "HEARTBEAT_STALE_S": "3"}


@pytest.fixture(scope="module")
def many_images(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough real images (2 x 400) that validating or evaluating them takes seconds: the kill lands mid-task (with
    2 x 150 a validation took 2.2 s, and on a loaded machine it once ended before the kill)."""
    return materialize(dataset_root, tmp_path_factory.mktemp("many"), per_class=400, splits="train")


def _kill_when(worker: Proc, started: Callable[[], bool], what: str) -> float:
    """SIGKILL the trainer (parent and pool child) as soon as `started()`; the monotonic time of the kill."""
    wait_for(started, 120, what, interval=0.05)
    worker.kill()
    return time.monotonic()


def _reap_until(settings: Settings, found: Callable[[ReapReport], list[int]], row_id: int, killed_at: float,
                timeout: float = 60) -> float:
    """Run the reaper every 0.25 s until it reports `row_id`; the seconds from the kill."""
    app = make_celery(settings)
    deadline = time.monotonic() + timeout
    while row_id not in found(reap(app, settings)):
        assert time.monotonic() < deadline, f"the reaper did not fail #{row_id} within {timeout:.0f} s of the kill"
        time.sleep(0.25)
    latency = time.monotonic() - killed_at
    print(f"#{row_id} failed {latency:.1f} s after its trainer was killed")
    return latency


def test_a_killed_trainers_dataset_validation_is_invalid_within_seconds(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, many_images: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, **FAST_BEATS}
    settings = get_settings(env)
    with session_scope(settings.database_url) as session:
        dataset_id = datasets.create_dataset(session, "many", "training", "folder", many_images).id
    worker = celery_worker_proc.start(env, queues="training")
    send_trainer_task(make_celery(settings), VALIDATE_DATASET_TASK, dataset_id)

    def started() -> bool:
        with session_scope(settings.database_url) as session:
            return session.get_one(Dataset, dataset_id).heartbeat_at is not None

    killed_at = _kill_when(worker, started, "the trainer to start validating")
    latency = _reap_until(settings, lambda r: r.failed_validations, dataset_id, killed_at)
    with session_scope(settings.database_url) as session:
        dataset = session.get_one(Dataset, dataset_id)
        assert dataset.status == "invalid", "the validation finished before the kill: give it more images"
        assert "the worker running it stopped" in str(dataset.error)
    assert latency < 3 + 1 + 5  # stale + one beat + slack


def test_a_killed_trainers_evaluation_fails_within_seconds(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, many_images: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, **FAST_BEATS}
    settings = get_settings(env)
    with session_scope(settings.database_url) as session:
        dataset = datasets.create_dataset(session, "many", "evaluation", "folder", many_images)
        datasets.record_validation(session, dataset.id, "classes", {}, {}, {}, "fingerprint")
        evaluation_id = evaluations.create_evaluation(
            session, int(env["FRACTURE_MODEL_VERSION_ID"]), dataset.id, audit=True).id
    worker = celery_worker_proc.start(env, queues="training")
    send_trainer_task(make_celery(settings), EVALUATE_TASK, evaluation_id)

    def started() -> bool:
        with session_scope(settings.database_url) as session:
            return session.get_one(Evaluation, evaluation_id).status == "running"

    killed_at = _kill_when(worker, started, "the trainer to start the evaluation")
    latency = _reap_until(settings, lambda r: r.failed_evaluations, evaluation_id, killed_at)
    with session_scope(settings.database_url) as session:
        evaluation = session.get_one(Evaluation, evaluation_id)
        assert evaluation.status == "failed" and "the worker running it stopped" in str(evaluation.error)
        assert evaluation.metrics == {}, "the evaluation finished before the kill: give it more images"
    assert latency < 3 + 1 + 5


def test_a_killed_trainers_training_run_fails_within_seconds_not_after_its_time_limit(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, many_images: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "FRACTURE_DATASET": str(many_images), **FAST_BEATS}
    settings = get_settings(env)
    assert settings.training_time_limit_s >= 3600
    with session_scope(settings.database_url) as session:
        run_id = trainings.create_run(session, {"epochs": 20, "width": 8, "image_size": 64}, "a long run").id
    worker = celery_worker_proc.start(env, queues="training")
    send_retrain(make_celery(settings), run_id)

    def started() -> bool:
        with session_scope(settings.database_url) as session:
            return session.get_one(TrainingRun, run_id).status == "running"

    killed_at = _kill_when(worker, started, "the trainer to start the run")
    latency = _reap_until(settings, lambda r: r.failed_runs, run_id, killed_at)
    with session_scope(settings.database_url) as session:
        run = session.get_one(TrainingRun, run_id)
        assert run.status == "failed" and "the worker running it stopped" in str(run.error)
        assert run.model_version_id is None
    assert latency < 3 + 1 + 5
