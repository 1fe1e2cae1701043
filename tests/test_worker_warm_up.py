"""A worker child loads the active model when it starts, not on its first chunk; a failed load never stops it."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import WorkerFactory, free_port, wait_for
from installation import create_job, job_state

from fracture import registry
from fracture.config import get_settings
from fracture.db import session_scope
from fracture.ml.inference import Predictor
from fracture.models import ModelStatus, ModelVersion
from fracture.queue import enqueue_job
from fracture.registry import checkpoint_path
from worker import classify
from worker.celery_app import make_celery

CHUNK_LINE = re.compile(r"chunk done: (\d+) images.*; timings start=\S+ end=\S+ total=([\d.]+) plan=\S+ load=([\d.]+)")


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Each test starts, and leaves, this process without a loaded model."""
    classify._predictors.clear()
    yield
    classify._predictors.clear()


def _version(env: dict[str, str]) -> int:
    return int(env["FRACTURE_MODEL_VERSION_ID"])


def test_warm_up_loads_the_active_model_once(fracture_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    settings = get_settings(fracture_env)
    with caplog.at_level(logging.INFO, logger="worker.classify"):
        predictor = classify.warm_up(settings)
    assert predictor is not None
    assert list(classify._predictors) == [_version(fracture_env)]
    assert re.search(r"model \S+ loaded in [\d.]+ s", caplog.text)
    with session_scope(settings.database_url) as session:
        version = session.get_one(ModelVersion, _version(fracture_env))
    assert classify.load_predictor(settings, version) is predictor  # the first chunk finds it loaded


def test_warm_up_without_an_active_model_leaves_it_to_the_first_chunk(
    fracture_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as session:
        session.get_one(ModelVersion, _version(fracture_env)).status = ModelStatus.CANDIDATE
    with caplog.at_level(logging.INFO, logger="worker.classify"):
        assert classify.warm_up(settings) is None
    assert "no active model" in caplog.text
    assert not classify._predictors


def test_warm_up_survives_an_unreachable_database(
    fracture_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env = {**fracture_env, "DATABASE_URL": f"postgresql+psycopg://nobody:x@127.0.0.1:{free_port()}/none"}
    with caplog.at_level(logging.INFO, logger="worker.classify"):
        assert classify.warm_up(get_settings(env)) is None
    assert "model not loaded at start" in caplog.text
    assert not classify._predictors


def test_warm_up_with_a_damaged_model_file_leaves_the_reason_to_the_job(
    fracture_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as session:
        checkpoint_path(settings, session.get_one(ModelVersion, _version(fracture_env))).write_bytes(b"damaged")
    with caplog.at_level(logging.INFO, logger="worker.classify"):
        assert classify.warm_up(settings) is None
    assert "SHA-256" in caplog.text
    assert not classify._predictors


def test_a_started_worker_child_has_the_model_before_its_first_chunk(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path]
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "8", "BATCH_SIZE": "8"}
    settings = get_settings(env)
    worker = celery_worker_proc.start(env)
    wait_for(lambda: worker.has_logged("loaded in"), 60, "the worker child to load the model")

    job_id = create_job(env, sample_images[:16])
    assert enqueue_job(make_celery(settings), settings, job_id) == 2
    wait_for(lambda: job_state(env, job_id)["status"] in ("done", "failed"), 120, "the job to finish")
    log = worker.log_text()
    assert job_state(env, job_id)["status"] == "done"
    assert log.index("loaded in") < log.index("received")  # loaded before any task arrived
    chunks = [(int(n), float(total), float(load)) for n, total, load in CHUNK_LINE.findall(log)]
    assert [n for n, _, _ in chunks] == [8, 8]
    (_, first, first_load), (_, second, _) = chunks
    assert first_load < 0.05, "the first chunk loaded the model itself"
    # Not much longer than the second (shared CPUs: a margin for noise, far below a model load's cost here).
    assert first < 2 * second + 0.5, chunks
    assert worker.alive()


def test_a_task_never_gets_the_model_while_the_warm_up_runs_its_batch(fracture_env: dict[str, str]) -> None:
    """A heatmap's layer hooks belong to the module, not to the thread: a task handed the model while the warm-up's
    batch runs beside it got its activations overwritten ("One of the differentiated Tensors does not require
    grad", seen in a real worker). The model is handed out only once warmed."""
    import threading

    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as session:
        version = registry.active_version(session)
    assert version is not None
    seen: list[bool] = []
    started = threading.Event()
    original = Predictor.warm_up

    def slow_warm_up(self: Predictor) -> None:
        started.set()
        time.sleep(1.0)
        original(self)
        seen.append(True)

    Predictor.warm_up = slow_warm_up  # type: ignore[method-assign]
    try:
        thread = classify.start_warm_up(settings)
        assert started.wait(30)
        classify.load_predictor(settings, version)  # what a task arriving now does
        assert seen == [True], "a task got the model before its warm-up batch had finished"
        thread.join(30)
    finally:
        Predictor.warm_up = original  # type: ignore[method-assign]
