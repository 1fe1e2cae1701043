"""Classify one chunk of a job's images with the job's pinned model version; plain code the task calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from fracture.checkpoint import CheckpointError, sha256_file
from fracture.config import Settings
from fracture.db import session_scope
from fracture.inference import Predictor
from fracture.models import Image, Job, JobStatus, ModelVersion, Result
from fracture.registry import checkpoint_path
from fracture.storage import Storage, StorageError
from worker.attempts import count_attempt, crash_reason, pending_attempts
from worker.results import Row, lock_job, mark_running, refresh_progress, upsert_results

log = logging.getLogger(__name__)

# One loaded model per process, keyed by model version id: a chunk of a job pinned to an older
# version still gets that version, and a new active version is loaded on its first job.
_predictors: dict[int, Predictor] = {}
_MAX_CACHED = 2


@dataclass(frozen=True)
class ChunkOutcome:
    """What a chunk did: images classified, error rows written, and whether it ran at all."""

    classified: int = 0
    errors: int = 0
    skipped: str | None = None


def load_predictor(settings: Settings, version: ModelVersion) -> Predictor:
    """The Predictor of `version`, loaded once per process; raises CheckpointError if the file is bad."""
    cached = _predictors.get(version.id)
    if cached is not None:
        return cached
    path = checkpoint_path(settings, version)
    if not path.is_file():
        raise CheckpointError(f"model file of version {version.name} is missing ({version.checkpoint_key})")
    if sha256_file(path) != version.checkpoint_sha256:
        raise CheckpointError(f"model file of version {version.name} does not match its recorded SHA-256")
    predictor = Predictor.from_file(path, batch_size=settings.batch_size, max_pixels=settings.max_image_pixels)
    while len(_predictors) >= _MAX_CACHED:
        _predictors.pop(next(iter(_predictors)))
    _predictors[version.id] = predictor
    return predictor


def _source(storage: Storage, image: Image) -> Path | str:
    """The stored file of `image`, or the reason there is none."""
    if not image.storage_key:
        return "no stored file for this image"
    try:
        return storage.path(image.storage_key)
    except StorageError as e:
        return str(e)


def classify_chunk(
    settings: Settings, job_id: str, image_ids: list[int], resend: Callable[[list[int]], None] | None = None
) -> ChunkOutcome:
    """Classify `image_ids` of `job_id` and upsert one Result each, then update the job's progress.

    Images that already have a result are skipped. A chunk seen before without finishing (its worker died) is
    split into single-image chunks through `resend`, so one image that kills the worker cannot take the others
    down with it; an image started more than settings.max_chunk_attempts times gets an error row instead.
    """
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return ChunkOutcome(skipped="job no longer exists")
        if job.status in JobStatus.FINAL:
            return ChunkOutcome(skipped=f"job is {job.status}")
        version = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
        attempts = pending_attempts(session, job_id, job.model_version_id, image_ids)
        if not attempts:
            return ChunkOutcome(skipped="every image already has a result")
        split = resend is not None and len(attempts) > 1 and max(attempts.values()) > 0
        crashed = {i: n for i, n in attempts.items() if n >= settings.max_chunk_attempts}
        todo_ids = [i for i in attempts if i not in crashed]
        if not split:
            count_attempt(session, todo_ids)
            images = session.scalars(
                select(Image).where(Image.job_id == job_id, Image.id.in_(todo_ids)).order_by(Image.seq)
            ).all()
            mark_running(session, job_id)
    if split and resend is not None:
        for image_id in sorted(attempts):
            resend([image_id])
        return ChunkOutcome(skipped=f"split into {len(attempts)} single-image chunks after an unfinished attempt")
    if crashed:
        log.error("job %s: images %s crashed their worker %d times; giving up on them", job_id, sorted(crashed),
                  settings.max_chunk_attempts)
        fail_images(settings, job_id, list(crashed), crash_reason(max(crashed.values())))
        if not images:
            return ChunkOutcome(errors=len(crashed), skipped="crashed too often")
    if version is None:
        return fail_job(settings, job_id, "the job has no model version")
    try:
        predictor = load_predictor(settings, version)
    except CheckpointError as e:
        return fail_job(settings, job_id, str(e))

    storage = Storage(settings.storage_dir)
    rows: list[Row] = []
    todo: list[tuple[Image, Path]] = []
    for image in images:
        source = _source(storage, image)
        if image.ingest_error:
            rows.append(Row(image.id, error=image.ingest_error))
        elif isinstance(source, str):
            rows.append(Row(image.id, error=source))
        else:
            todo.append((image, source))
    for pred in predictor.predict([path for _, path in todo]):
        image = todo[pred.index][0]
        rows.append(Row(image.id, pred.label, pred.probability, pred.error))

    with session_scope(settings.database_url) as session:
        job = lock_job(session, job_id)
        if job is None:
            return ChunkOutcome(skipped="job no longer exists")
        upsert_results(session, job_id, version.id, rows)
        refresh_progress(session, job)
    errors = sum(r.error is not None for r in rows)
    return ChunkOutcome(classified=len(rows) - errors, errors=errors)


def fail_images(settings: Settings, job_id: str, image_ids: list[int], reason: str) -> None:
    """Give every image of `image_ids` still without an outcome an error row (a chunk that cannot finish)."""
    with session_scope(settings.database_url) as session:
        job = lock_job(session, job_id)
        if job is None:
            return
        upsert_results(session, job_id, job.model_version_id, [Row(i, error=reason) for i in image_ids],
                       overwrite=False)
        refresh_progress(session, job)


def fail_job(settings: Settings, job_id: str, reason: str) -> ChunkOutcome:
    """End the job as failed (a job-level fault such as a bad model file): every image left gets the reason."""
    log.error("job %s failed: %s", job_id, reason)
    with session_scope(settings.database_url) as session:
        job = lock_job(session, job_id)
        if job is None or job.status in JobStatus.FINAL:
            return ChunkOutcome(skipped="job already final")
        done = select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == job.model_version_id)
        missing = session.scalars(select(Image.id).where(Image.job_id == job_id, Image.id.not_in(done))).all()
        upsert_results(session, job_id, job.model_version_id, [Row(i, error=reason) for i in missing],
                       overwrite=False)
        now = datetime.now(UTC)
        job.status = JobStatus.FAILED
        job.error = reason
        job.started_at = job.started_at or now
        job.finished_at = now
        refresh_progress(session, job)
    return ChunkOutcome(errors=len(missing), skipped=reason)
