"""SIGKILL the worker mid-job, start another: the job still finishes with every image present exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import WorkerFactory, wait_for
from installation import create_job, image_files, job_state, materialize

from fracture.config import get_settings
from fracture.queue import enqueue_job
from worker.celery_app import make_celery

N_IMAGES = 200


@pytest.fixture(scope="module")
def two_hundred_images(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    files = image_files(materialize(dataset_root, tmp_path_factory.mktemp("k200"), per_class=100, splits="train"))
    assert len(files) == N_IMAGES
    return files


@pytest.mark.slow
def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, two_hundred_images: list[Path]
) -> None:
    # Small chunks so the kill lands mid-job; a short visibility timeout so redis hands the
    # killed worker's unacked chunk to the next worker within seconds instead of an hour.
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "4", "BATCH_SIZE": "4",
           "BROKER_VISIBILITY_TIMEOUT_S": "8"}
    settings = get_settings(env)
    job_id = create_job(env, two_hundred_images)
    first = celery_worker_proc.start(env)
    started = time.monotonic()
    assert enqueue_job(make_celery(settings), settings, job_id) == N_IMAGES // 4

    wait_for(lambda: job_state(env, job_id)["processed"] > 0, 120, "the first results")
    first.kill()
    at_kill = job_state(env, job_id)
    print(f"killed after {time.monotonic() - started:.1f}s with {at_kill['processed']}/{N_IMAGES} done")
    assert 0 < at_kill["processed"] < N_IMAGES, "the job finished before the kill: make the chunks smaller"
    assert at_kill["status"] == "running"

    second = celery_worker_proc.start(env)
    state = wait_for(lambda: (s := job_state(env, job_id))["status"] in ("done", "failed") and s, 180, "job done")
    print(f"done {time.monotonic() - started:.1f}s after enqueue")
    assert state["status"] == "done", state
    assert state["processed"] == N_IMAGES
    assert len(state["per_image"]) == N_IMAGES
    duplicated = {image: n for image, n in state["per_image"].items() if n != 1}
    assert not duplicated, f"images with more than one result: {duplicated}"
    assert second.alive()
