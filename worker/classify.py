"""Classify one chunk of a job's images with the job's pinned model version; plain code the task calls."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fracture import jobs, latency, registry
from fracture.config import Settings
from fracture.db import session_scope
from fracture.ml.checkpoint import CheckpointError
from fracture.ml.inference import Prediction, Predictor, StageTimes
from fracture.models import Image, ModelVersion
from fracture.storage import Storage, StorageError

log = logging.getLogger(__name__)

# One loaded model per process, keyed by model version id: a chunk of a job pinned to an older
# version still gets that version, and a new active version is loaded on its first job.
_predictors: dict[int, Predictor] = {}
_MAX_CACHED = 2
# Held while a model loads (and while the start-up warm-up runs its first batch), so a chunk that arrives during the
# warm-up waits for that load instead of loading the same model a second time beside it.
_loading = threading.RLock()


@dataclass(frozen=True)
class ChunkOutcome:
    """What a chunk did: images classified, error rows written, whether it ran at all, and how long the run took."""

    classified: int = 0
    errors: int = 0
    skipped: str | None = None
    seconds: float | None = None  # decode, preprocess, forward and write (fracture_chunk_seconds); None if not run
    timings: str = ""  # "start=... end=... total=... plan=... load=... ..." (chunk_timings), for the log line


def load_predictor(settings: Settings, version: ModelVersion) -> Predictor:
    """The Predictor of `version`, loaded once per process (fracture.registry.load_predictor: SHA-256 checked);
    raises CheckpointError if the file is bad."""
    cached = _predictors.get(version.id)
    if cached is not None:
        return cached
    with _loading:
        cached = _predictors.get(version.id)  # loaded by the warm-up while this waited
        if cached is not None:
            return cached
        return _cache(version.id, registry.load_predictor(settings, version))


def _cache(version_id: int, predictor: Predictor) -> Predictor:
    while len(_predictors) >= _MAX_CACHED:
        _predictors.pop(next(iter(_predictors)))
    _predictors[version_id] = predictor
    return predictor


def warm_up(settings: Settings) -> Predictor | None:
    """Load the active version's model into this process and run one batch through it, so a just-started worker's
    first chunk runs as fast as its later ones.

    Never raises: with no active version, an unreachable database or a bad model file it logs why and returns None,
    and the first chunk loads its job's model lazily as before (and fails that job with the reason, if any).
    """
    started = time.perf_counter()
    try:
        with session_scope(settings.database_url) as session:
            version = registry.active_version(session)
        if version is None:
            log.info("no active model to load at start: it is loaded on the first chunk")
            return None
        with _loading:  # a chunk arriving now waits for this load, and for the warm-up batch after it
            predictor = _predictors.get(version.id)
            if predictor is None:
                predictor = registry.load_predictor(settings, version)
                # Cached only once warmed: a task never runs the network beside the warm-up's batch (the layer
                # hooks of a heatmap are the module's, not the thread's: the warm-up's forward pass would fill them).
                predictor.warm_up()
                _cache(version.id, predictor)
    except Exception as e:  # any failure here only postpones the load to the first chunk
        log.warning("model not loaded at start (it is loaded on the first chunk): %s: %s", type(e).__name__, e)
        return None
    log.info("model %s loaded in %.2f s (before any chunk)", version.name, time.perf_counter() - started)
    return predictor


def start_warm_up(settings: Settings) -> threading.Thread:
    """Run warm_up in a background thread of this (pool child) process and return the thread.

    In the background because Celery kills a pool child that has not reported up within worker_proc_alive_timeout
    (4 s) of its start, and a model load on a busy CPU can take longer; a chunk that arrives meanwhile waits on the
    loading lock.
    """
    thread = threading.Thread(target=warm_up, args=(settings,), name="model-warm-up", daemon=True)
    thread.start()
    return thread


def _source(storage: Storage, image: Image) -> Path | str:
    """The stored file of `image`, or the reason there is none."""
    if not image.storage_key:
        return "no stored file for this image"
    try:
        return storage.path(image.storage_key)
    except StorageError as e:
        return str(e)


def thumbnail_key(image: Image) -> str:
    """Where the worker keeps an image's thumbnail: beside nothing the user named, under the job's prefix."""
    return f"thumbnails/{image.job_id}/{image.id}.jpg"


def _save_thumbnail(storage: Storage, image: Image, pred: Prediction) -> str | None:
    """Write the prediction's thumbnail to storage and return its key; a failed write costs the thumbnail only."""
    if pred.thumbnail is None:
        return None
    key = thumbnail_key(image)
    try:
        storage.write_bytes(key, pred.thumbnail)
    except OSError as e:
        log.warning("job %s image %s: thumbnail not written: %s", image.job_id, image.id, e)
        return None
    return key


def classify_chunk(
    settings: Settings, job_id: str, image_ids: list[int], resend: Callable[[list[int]], None] | None = None
) -> ChunkOutcome:
    """Classify `image_ids` of `job_id` and record one outcome each; the job's progress follows.

    Images that already have a result are skipped. A chunk seen before without finishing (its worker died) is
    split into single-image chunks through `resend`, so one image that kills the worker cannot take the others
    down with it; an image started more than settings.max_chunk_attempts times gets an error row instead.
    """
    started, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
    with session_scope(settings.database_url) as session:
        plan = jobs.plan_chunk(session, job_id, image_ids, settings.max_chunk_attempts, may_split=resend is not None)
    plan_s = time.perf_counter() - t0
    if plan.skipped:
        return ChunkOutcome(skipped=plan.skipped)
    if plan.split and resend is not None:
        for image_id in plan.split:
            resend([image_id])
        return ChunkOutcome(skipped=f"split into {len(plan.split)} single-image chunks after an unfinished attempt")
    if plan.crashed:
        log.error("job %s: images %s crashed their worker %d times; giving up on them", job_id, sorted(plan.crashed),
                  settings.max_chunk_attempts)
        reason = jobs.crash_reason(max(plan.crashed.values()))
        with session_scope(settings.database_url) as session:
            jobs.fail_images(session, job_id, list(plan.crashed), reason)
        if not plan.images:
            return ChunkOutcome(errors=len(plan.crashed), skipped="crashed too often")
    version = plan.version
    if version is None:
        return fail_job(settings, job_id, "the job has no model version")
    t0 = time.perf_counter()
    try:
        predictor = load_predictor(settings, version)
    except CheckpointError as e:
        return fail_job(settings, job_id, str(e))
    load_s = time.perf_counter() - t0

    work_started = time.perf_counter()  # the chunk's own work, not the model's first load in this process
    storage = Storage(settings.storage_dir)
    outcomes: list[jobs.Outcome] = []
    todo: list[tuple[Image, Path]] = []
    for image in plan.images:
        source = _source(storage, image)
        if isinstance(source, str):
            outcomes.append(jobs.Outcome(image.id, error=source))
        else:
            todo.append((image, source))
    times = StageTimes()
    thumb_write_s = 0.0
    for pred in predictor.predict([path for _, path in todo], thumbnails=settings.thumbnails, times=times):
        image = todo[pred.index][0]
        t0 = time.perf_counter()
        thumbnail = _save_thumbnail(storage, image, pred)
        thumb_write_s += time.perf_counter() - t0
        outcomes.append(jobs.Outcome(image.id, pred.label, pred.probability, pred.error,
                                     pred.in_distribution, pred.ood_score, thumbnail))

    t0 = time.perf_counter()
    with session_scope(settings.database_url) as session:
        jobs.record_outcomes(session, job_id, version.id, outcomes)
        seconds = time.perf_counter() - work_started
        # In the results' transaction: a chunk counts once its results are in, never for a run that died.
        latency.observe_chunk(session, seconds, len(outcomes), predictor.device.type)
    write_s = time.perf_counter() - t0
    timings = chunk_timings(started, plan=plan_s, load=load_s, times=times, thumb_write=thumb_write_s, write=write_s,
                            cpu=time.process_time() - cpu0)
    errors = sum(o.error is not None for o in outcomes)
    return ChunkOutcome(classified=len(outcomes) - errors, errors=errors, seconds=seconds, timings=timings)


def chunk_timings(started: float, *, plan: float, load: float, times: StageTimes, thumb_write: float, write: float,
                  cpu: float) -> str:
    """The seconds of each stage of a chunk, as the worker's "chunk done" line ends (bench/breakdown.py reads it).

    start and end are epoch seconds, so the gaps between chunks can be told; decode, preprocess and thumbnail are
    summed over the decode threads, which run beside the forward passes; cpu is the CPU time of this process over
    the chunk (all its threads), which tells a chunk that had more work from one that had less of the CPU.
    """
    ended = time.time()
    stages = {"plan": plan, "load": load, "decode": times.decode, "preprocess": times.preprocess,
              "thumbnail": times.thumbnail, "decode_wait": times.decode_wait, "forward": times.forward,
              "ood": times.ood, "thumb_write": thumb_write, "write": write, "cpu": cpu}
    return f"start={started:.3f} end={ended:.3f} total={ended - started:.4f} " + " ".join(
        f"{k}={v:.4f}" for k, v in stages.items())


def fail_images(settings: Settings, job_id: str, image_ids: list[int], reason: str) -> None:
    """Give every image of `image_ids` still without an outcome an error row (a chunk that cannot finish)."""
    with session_scope(settings.database_url) as session:
        jobs.fail_images(session, job_id, image_ids, reason)


def fail_job(settings: Settings, job_id: str, reason: str) -> ChunkOutcome:
    """End the job as failed (a job-level fault such as a bad model file): every image left gets the reason."""
    log.error("job %s failed: %s", job_id, reason)
    with session_scope(settings.database_url) as session:
        errors = jobs.fail_job(session, job_id, reason)
    if errors is None:
        return ChunkOutcome(skipped="job already final")
    return ChunkOutcome(errors=errors, skipped=reason)
