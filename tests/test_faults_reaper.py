"""The reaper's rules, one pass at a time against real redis: what it re-enqueues, what it leaves alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from installation import create_job, job_state

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.deliveries import claim_report, plan
from fracture.jobs import BROKER_DOWN_MESSAGE
from fracture.models import Job, JobSource, TrainingRun
from fracture.queue import enqueue_job, queued_messages
from fracture.storage import Storage
from worker.celery_app import make_celery
from worker.reaper import reap


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
    env = {**fracture_env, "TRAINING_TIME_LIMIT_S": "60", "REAPER_STALE_S": "30",
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
    assert first.failed_runs == [ids[0]]  # 120 s > limit 60 s + stale 30 s; the other one is 10 s in
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
    assert app.amqp.router.route({}, "maintenance.reap")["queue"].name == "inference"


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
