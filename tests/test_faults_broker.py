"""The broker fails: redis stopped and restarted mid-job, and redis flushed before a worker took the job."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faults import RedisProc, assert_each_image_once, get_job, post_images
from harness import WorkerFactory, free_port, start_web, wait_for
from installation import create_job, job_state

from fracture.config import get_settings
from fracture.queue import enqueue_job
from worker.celery_app import make_celery
from worker.reaper import reap

pytestmark = pytest.mark.slow


def _final(env: dict[str, str], job_id: str) -> dict[str, object] | None:
    state = job_state(env, job_id)
    return state if state["status"] in ("done", "failed", "cancelled") else None


def test_redis_restart_mid_job_gives_503_loses_nothing_and_finishes(
    fracture_env: dict[str, str], celery_worker_proc: WorkerFactory, sample_images: list[Path], tmp_path: Path
) -> None:
    redis = RedisProc(tmp_path)
    redis.start()
    env = {**fracture_env, "REDIS_URL": redis.url, "CHUNK_SIZE": "2", "BATCH_SIZE": "2", "REAPER_STALE_S": "2"}
    settings = get_settings(env)
    worker = celery_worker_proc.start(env)
    port = free_port()
    web = start_web(env, port, tmp_path / "logs")
    url = f"http://127.0.0.1:{port}"
    files = sample_images * 3  # enough chunks that the outage lands mid-job
    try:
        first = post_images(url, env, files)
        assert first.status_code == 201, first.text
        job_a = first.json()["id"]
        wait_for(lambda: job_state(env, job_a)["processed"] > 0, 120, "the first results of job A")

        redis.stop()  # mid-job: every message still queued in redis is gone with it
        at_stop = job_state(env, job_a)
        assert at_stop["processed"] < len(files), "job A finished before the outage: use smaller chunks"
        started = time.monotonic()
        second = post_images(url, env, sample_images[:5])
        answered_s = time.monotonic() - started
        assert second.status_code == 503, second.text
        body = second.json()
        assert "broker" in body["error"] and "queued" in body["error"]
        assert answered_s < 10, f"the 503 took {answered_s:.1f} s"
        job_b = body["id"]
        assert job_state(env, job_b)["status"] == "queued"  # accepted and kept, with its reason
        assert get_job(url, env, job_a).status_code == 200  # status pages read the database, not the broker

        redis.start()  # same port, empty
        # The reaper dispatches B (never sent) and re-enqueues A's lost chunks; the worker reconnects by itself.
        app = make_celery(settings)
        reports = []

        def both_final() -> bool:
            reports.append(reap(app, settings))
            return bool(_final(env, job_a) and _final(env, job_b))

        wait_for(both_final, 180, "jobs A and B to finish after redis came back", interval=1.0)
        print(f"503 in {answered_s:.2f} s; A had {at_stop['processed']}/{len(files)} at the outage; "
              f"reaper passes: {len(reports)}, acted: {[r.as_dict() for r in reports if r.acted]}")
        assert_each_image_once(job_state(env, job_a), len(files))
        assert_each_image_once(job_state(env, job_b), 5)
        assert job_state(env, job_b)["error"] is None
        assert any(job_b in r.dispatched for r in reports)
        assert any(job_a in r.requeued for r in reports)

        third = post_images(url, env, sample_images[:3])  # the web reconnected by itself too
        assert third.status_code == 201, third.text
        wait_for(lambda: _final(env, third.json()["id"]), 60, "job C")
        assert_each_image_once(job_state(env, third.json()["id"]), 3)
        assert worker.alive(), "the worker did not survive the outage"
    finally:
        web.stop()
        redis.stop()


def test_flushed_broker_is_detected_and_reenqueued_by_the_reaper(
    fracture_env: dict[str, str], celery_worker_proc: WorkerFactory, sample_images: list[Path], tmp_path: Path
) -> None:
    redis = RedisProc(tmp_path)
    redis.start()
    env = {**fracture_env, "REDIS_URL": redis.url, "CHUNK_SIZE": "8", "REAPER_STALE_S": "1"}
    settings = get_settings(env)
    app = make_celery(settings)
    try:
        job_id = create_job(env, sample_images)
        assert enqueue_job(app, settings, job_id) > 0
        redis.flushall()  # every task of the job vanishes before any worker saw it

        report = reap(app, settings)
        assert report.requeued == [], "a job is re-enqueued before it is stale"
        report = reap(app, settings, now=datetime.now(UTC) + timedelta(seconds=2))  # past REAPER_STALE_S=1
        assert report.requeued == [job_id], report
        assert report.chunks == -(-len(sample_images) // 8)
        assert reap(app, settings).requeued == [], "re-enqueued again although it just was"

        celery_worker_proc.start(env)
        state = wait_for(lambda: _final(env, job_id), 120, "the job to finish")
        assert isinstance(state, dict)
        assert_each_image_once(state, len(sample_images))
    finally:
        redis.stop()
