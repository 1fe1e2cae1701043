"""Limits and bad state with real workers: chunk time limit, memory limit, a bad model file, a chunk that
keeps killing its worker. Each job ends in a final state with reasons, and the next job works."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from faults import assert_each_image_once
from harness import WorkerFactory, wait_for
from installation import create_job, job_state, register_model
from PIL import Image as PILImage
from sqlalchemy import select

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.models import Image, ModelVersion, Result
from fracture.queue import enqueue_job
from fracture.registry import checkpoint_path
from worker.celery_app import make_celery

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_png(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real X-ray scaled up to 7000x7000 (legal: under MAX_IMAGE_PIXELS), about 0.4 s to decode."""
    path = tmp_path_factory.mktemp("big") / "big.png"
    with PILImage.open(sample_images[0]) as im:
        im.convert("L").resize((7000, 7000)).save(path, compress_level=1)
    return path


@pytest.fixture(scope="module")
def huge_png(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real X-ray scaled up to 12000x12000 (legal under MAX_IMAGE_PIXELS=150000000), over a second to decode: a
    window the test's poll does not miss on a busy 2-core machine (at 7000x7000, 0.4 s, it once did)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    with PILImage.open(sample_images[0]) as im:
        im.convert("L").resize((12000, 12000)).save(path, compress_level=1)
    return path


def _run(env: dict[str, str], files: list[Path], timeout: float = 120) -> dict[str, object]:
    """Create a job of `files`, enqueue it, and wait for a final state."""
    settings = get_settings(env)
    job_id = create_job(env, files)
    enqueue_job(make_celery(settings), settings, job_id)
    state = wait_for(lambda: (s := job_state(env, job_id))["status"] in ("done", "failed", "cancelled") and s,
                     timeout, f"job {job_id} to finish")
    assert isinstance(state, dict)
    return {**state, "id": job_id}


def _errors(env: dict[str, str], job_id: str) -> list[str | None]:
    with session_scope(get_settings(env).database_url) as session:
        return list(session.scalars(select(Result.error).where(Result.job_id == job_id)))


def test_a_chunk_over_its_time_limit_gets_timeout_rows_and_the_next_job_works(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path],
    big_png: Path,
) -> None:
    # Hard limit 4 s, soft 2 s; 24 huge images in one chunk take several seconds to decode for real.
    env = {**fracture_env, "REDIS_URL": redis_url, "TASK_TIME_LIMIT_S": "4", "CHUNK_SIZE": "64", "BATCH_SIZE": "1"}
    worker = celery_worker_proc.start(env)
    slow = _run(env, [big_png] * 24)
    assert slow["status"] == "done" and slow["failed"] == 24, slow
    assert set(_errors(env, str(slow["id"]))) == {"timed out after 2 s (the chunk's time limit)"}

    nxt = _run(env, sample_images[:6])
    assert_each_image_once(nxt, 6)
    assert worker.alive()


def test_a_worker_over_its_memory_limit_is_replaced_and_jobs_complete(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path]
) -> None:
    # 1 KiB: every pool child is over the limit after its first task, so each chunk runs in a fresh child.
    env = {**fracture_env, "REDIS_URL": redis_url, "WORKER_MAX_MEMORY_KB": "1", "CHUNK_SIZE": "8"}
    worker = celery_worker_proc.start(env)
    files = sample_images[:24]
    assert_each_image_once(_run(env, files), len(files))
    assert_each_image_once(_run(env, sample_images[24:30]), 6)
    # Each chunk (3 + 1) ran in a child of its own: the children were replaced after every task.
    children = set(re.findall(r"ForkPoolWorker-\d+", worker.log.read_text(errors="replace")))
    assert len(children) >= 4, worker.log_text()
    assert worker.alive()


def test_a_bad_model_file_fails_the_job_with_its_reason_and_a_good_model_fixes_it(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path],
    tiny_checkpoint: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url}
    settings = get_settings(env)
    with session_scope(settings.database_url) as session:
        version = session.get(ModelVersion, int(env["FRACTURE_MODEL_VERSION_ID"]))
        assert version is not None
        stored = checkpoint_path(settings, version)
    stored.write_bytes(b"not a checkpoint")
    celery_worker_proc.start(env)

    corrupt = _run(env, sample_images[:4])
    assert corrupt["status"] == "failed"
    assert "does not match its recorded SHA-256" in str(corrupt["error"])
    assert len(corrupt["per_image"]) == 4  # every image carries the reason  # type: ignore[arg-type]

    stored.unlink()
    missing = _run(env, sample_images[:4])
    assert missing["status"] == "failed" and "is missing" in str(missing["error"])

    register_model(env, tiny_checkpoint)  # a good version, now active
    assert_each_image_once(_run(env, sample_images[4:10]), 6)


def _pool_children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_a_chunk_that_kills_its_worker_is_split_and_given_up_after_n_attempts(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path],
    huge_png: Path,
) -> None:
    """An image that kills the pool child every time (the test kills it while that image is being decoded)."""
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "16", "MAX_CHUNK_ATTEMPTS": "3",
           "MAX_IMAGE_PIXELS": "150000000"}
    settings = get_settings(env)
    worker = celery_worker_proc.start(env)
    files = [*sample_images[:3], huge_png, *sample_images[3:6]]
    job_id = create_job(env, files)
    with session_scope(settings.database_url) as session:
        killer = session.scalars(select(Image.id).where(Image.job_id == job_id, Image.seq == 4)).one()
    enqueue_job(make_celery(settings), settings, job_id)

    kills = 0
    seen = 0

    def kill_on_each_attempt() -> bool:
        nonlocal kills, seen
        with session_scope(settings.database_url) as session:
            attempts = session.scalars(select(Image.attempts).where(Image.id == killer)).one()
            has_result = session.scalars(select(Result.id).where(Result.image_id == killer)).first() is not None
        if attempts > seen and not has_result:
            seen = attempts
            print(f"attempt {attempts} of the killer image: killing {_pool_children(worker.pid)}")
            for child in _pool_children(worker.pid):
                os.kill(child, signal.SIGKILL)
                kills += 1
        return job_state(env, job_id)["status"] in ("done", "failed")

    wait_for(kill_on_each_attempt, 180, "the job to finish", interval=0.05)
    state = job_state(env, job_id)
    print(f"killed the pool child {kills} times")
    assert kills == 3
    assert_each_image_once(state, len(files))
    assert state["failed"] == 1
    with session_scope(settings.database_url) as session:
        error = session.scalars(select(Result.error).where(Result.image_id == killer)).one()
    assert error == "the worker crashed 3 times while classifying this image; it is not retried again"
    assert worker.alive()
    assert_each_image_once(_run(env, sample_images[6:9]), 3)
