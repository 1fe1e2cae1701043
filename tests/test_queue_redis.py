"""A job through real redis and a real Celery worker process: every image gets exactly one result."""

from __future__ import annotations

import time
from pathlib import Path

from harness import WorkerFactory, wait_for
from installation import create_job, job_state

from fracture.config import get_settings
from fracture.queue import enqueue_job, worker_ping
from worker.celery_app import make_celery


def test_job_runs_through_redis_and_a_real_worker(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path]
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "16", "BATCH_SIZE": "8"}
    settings = get_settings(env)
    worker = celery_worker_proc.start(env)
    app = make_celery(settings)
    assert worker_ping(app, timeout=2)["workers"], "the worker does not answer a ping over redis"

    job_id = create_job(env, sample_images, refused={"notes.txt": "not an image"})
    started = time.monotonic()
    chunks = enqueue_job(app, settings, job_id)
    assert chunks == -(-len(sample_images) // 16)

    state = wait_for(lambda: (s := job_state(env, job_id))["status"] in ("done", "failed") and s, 120, "job done")
    elapsed = time.monotonic() - started
    print(f"{len(sample_images)} images in {chunks} chunks: {elapsed:.1f}s")
    assert state["status"] == "done", state
    assert state["total"] == len(sample_images) + 1
    assert state["processed"] == state["total"]
    assert len(state["per_image"]) == state["total"]
    assert set(state["per_image"].values()) == {1}
    assert state["failed"] >= 1  # at least the refused file; a truncated real image may add one
    assert worker.alive()


def test_an_unreachable_broker_is_reported_quickly(fracture_env: dict[str, str], sample_images: list[Path]) -> None:
    from harness import free_port

    from fracture.queue import BrokerUnavailable, broker_ping

    env = {**fracture_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    settings = get_settings(env)
    app = make_celery(settings)
    job_id = create_job(env, sample_images[:3])
    started = time.monotonic()
    assert broker_ping(app) is False
    try:
        enqueue_job(app, settings, job_id)
    except BrokerUnavailable as e:
        assert "broker" in str(e)
    else:
        raise AssertionError("enqueue_job did not raise BrokerUnavailable")
    assert time.monotonic() - started < 15
    assert job_state(env, job_id)["status"] == "queued"
