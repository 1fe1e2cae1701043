"""The worker's plain functions, called directly: idempotent chunks, a bad model file, due schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from installation import create_job, job_state
from sqlalchemy import select

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.models import Image, ModelVersion, Result, Schedule, TrainingRun
from fracture.registry import checkpoint_path
from worker.classify import _predictors, classify_chunk
from worker.schedules import run_due_schedules


def _image_ids(env: dict[str, str], job_id: str) -> list[int]:
    with session_scope(get_settings(env).database_url) as session:
        return list(session.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.seq)))


def test_a_chunk_run_twice_writes_each_result_once(fracture_env: dict[str, str], sample_images: list[Path]) -> None:
    settings = get_settings(fracture_env)
    job_id = create_job(fracture_env, sample_images[:12])
    ids = _image_ids(fracture_env, job_id)

    first = classify_chunk(settings, job_id, ids[:8])
    assert first.classified + first.errors == 8
    state = job_state(fracture_env, job_id)
    assert (state["status"], state["processed"]) == ("running", 8)

    classify_chunk(settings, job_id, ids[:8])  # a redelivered chunk
    classify_chunk(settings, job_id, ids[8:])
    state = job_state(fracture_env, job_id)
    assert state["status"] == "done"
    assert state["processed"] == 12
    assert state["per_image"] == {i: 1 for i in ids}
    with session_scope(settings.database_url) as session:
        results = session.scalars(select(Result).where(Result.job_id == job_id)).all()
    for r in results:
        assert (r.error is None) == (r.prediction in ("fractured", "not fractured"))
        assert r.error is not None or 0.0 <= r.probability <= 1.0

    assert classify_chunk(settings, job_id, ids[:4]).skipped == "job is done"


def test_a_missing_stored_file_becomes_an_error_row(fracture_env: dict[str, str], sample_images: list[Path]) -> None:
    settings = get_settings(fracture_env)
    job_id = create_job(fracture_env, sample_images[:3])
    ids = _image_ids(fracture_env, job_id)
    with session_scope(settings.database_url) as session:
        gone = session.get(Image, ids[1])
        assert gone is not None and gone.storage_key
        (settings.storage_dir / gone.storage_key).unlink()

    classify_chunk(settings, job_id, ids)
    state = job_state(fracture_env, job_id)
    assert (state["status"], state["processed"], state["failed"]) == ("done", 3, 1)


def test_a_corrupt_model_file_fails_the_job_with_a_reason(
    fracture_env: dict[str, str], sample_images: list[Path]
) -> None:
    settings = get_settings(fracture_env)
    job_id = create_job(fracture_env, sample_images[:5])
    with session_scope(settings.database_url) as session:
        version = session.get(ModelVersion, int(fracture_env["FRACTURE_MODEL_VERSION_ID"]))
        assert version is not None
        checkpoint_path(settings, version).write_bytes(b"not a checkpoint")
    _predictors.clear()  # a model loaded by an earlier test of this process must not hide the damage

    classify_chunk(settings, job_id, _image_ids(fracture_env, job_id)[:2])
    state = job_state(fracture_env, job_id)
    assert state["status"] == "failed"
    assert "SHA-256" in str(state["error"])
    # Every image of the job has a row saying why, not only those of the chunk.
    assert state["processed"] == state["failed"] == 5


def test_due_schedules_become_training_runs(fracture_env: dict[str, str]) -> None:
    settings = get_settings(fracture_env)
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        session.add_all([
            Schedule(name="nightly", interval_minutes=60, params={"epochs": 3}, next_run_at=now - timedelta(hours=5)),
            Schedule(name="later", interval_minutes=60, next_run_at=now + timedelta(minutes=5)),
            Schedule(name="off", interval_minutes=60, enabled=False, next_run_at=now - timedelta(hours=1)),
            Schedule(name="new", interval_minutes=30),
        ])
    sent: list[int] = []

    created = run_due_schedules(settings, sent.append, now=now)
    assert created == sent and len(created) == 1
    assert run_due_schedules(settings, sent.append, now=now) == []  # not twice for one slot
    with session_scope(settings.database_url) as session:
        run = session.get(TrainingRun, created[0])
        assert run is not None and run.params == {"epochs": 3} and run.epochs == 3 and run.status == "queued"
        by_name = {s.name: s for s in session.scalars(select(Schedule))}
    nightly = by_name["nightly"]
    assert nightly.next_run_at is not None and nightly.next_run_at.replace(tzinfo=UTC) > now
    assert by_name["new"].next_run_at is not None and by_name["new"].last_run_at is None


def test_the_torchvision_decoder_classifies_a_job_as_pillow_does(
    fracture_env: dict[str, str], sample_images: list[Path]
) -> None:
    """DECODER reaches the worker's predictor (the GPU path, run here on the CPU): the same job classified with each
    decoder gets the same decisions, the same error row for a file gone from storage, and a thumbnail per image."""
    jpegs = [p for p in sample_images if p.read_bytes()[:3] == b"\xff\xd8\xff"][:10]
    assert len(jpegs) >= 8
    outcomes = {}
    for decoder in ("pillow", "torchvision"):
        settings = get_settings({**fracture_env, "DECODER": decoder})
        job_id = create_job(fracture_env, [*jpegs, sample_images[0]])
        ids = _image_ids(fracture_env, job_id)
        with session_scope(settings.database_url) as session:
            gone = session.get(Image, ids[-1])
            assert gone is not None and gone.storage_key
            (settings.storage_dir / gone.storage_key).unlink()
        _predictors.clear()  # the worker caches its predictor per version, built with the process's settings
        try:
            classify_chunk(settings, job_id, ids)
            assert next(iter(_predictors.values())).decoder == decoder
        finally:
            _predictors.clear()
        with session_scope(settings.database_url) as session:
            rows = session.execute(select(Image.seq, Result.prediction, Result.probability, Result.error,
                                          Image.thumbnail_key).join(Result, Result.image_id == Image.id)
                                   .where(Image.job_id == job_id).order_by(Image.seq)).all()
        outcomes[decoder] = rows
    pillow, torchvision = outcomes["pillow"], outcomes["torchvision"]
    assert len(pillow) == len(torchvision) == len(jpegs) + 1
    assert [r.prediction for r in pillow] == [r.prediction for r in torchvision]
    # Said without the server's storage path.
    assert pillow[-1].error == torchvision[-1].error == "could not read file: No such file or directory"
    assert max(abs(a.probability - b.probability) for a, b in zip(pillow[:-1], torchvision[:-1], strict=True)) < 0.01
    assert all(r.thumbnail_key for r in torchvision[:-1])
