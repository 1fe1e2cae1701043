"""The state of upload jobs: the only code that creates jobs and images, records outcomes and moves statuses.

The web, the worker's tasks, the queue's producer and the reaper call these functions inside their own
transactions (each takes a Session); none of them writes a Job, Image or Result row itself. Progress is
always recomputed from the Result rows, never incremented, so a chunk that runs twice counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import case, false, func, insert, select, update
from sqlalchemy.orm import Session

from fracture import dicom, latency
from fracture.db import insert_on_conflict
from fracture.models import FINAL_JOB_STATUSES, Image, Job, JobSource, JobStatus, ModelVersion, Result

BROKER_DOWN_MESSAGE = (
    "The job was saved but the task queue (broker) is unavailable, so it has not started yet; "
    "it stays queued and is dispatched when the broker is back."
)
# The columns of a result, in the CSV of a job and of `fracture classify` alike (the UIDs empty but for DICOM).
RESULT_COLUMNS = ("path", "prediction", "probability", "in_distribution", "ood_score", "model_version", "error",
                  "study_instance_uid", "sop_instance_uid")
# Added only while SHOW_PATIENT_IDENTIFIERS is on; otherwise they appear in no page, JSON or CSV.
PATIENT_COLUMNS = ("patient_name", "patient_id", "patient_birth_date")
_INSERT_SLICE = 1000

log = logging.getLogger(__name__)


def result_columns(show_patient_identifiers: bool = False) -> tuple[str, ...]:
    """The CSV columns of a result, with the patient's identifiers when the setting shows them."""
    return RESULT_COLUMNS + PATIENT_COLUMNS if show_patient_identifiers else RESULT_COLUMNS


def csv_row(result: Mapping[str, object], columns: Sequence[str] = RESULT_COLUMNS) -> list[str]:
    """A result's values as one CSV row of `columns`: numbers to 6 decimals, flags as true/false, None empty."""
    cells = []
    for column in columns:
        value = result.get(column)
        if value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        elif isinstance(value, float):
            cells.append(f"{value:.6f}")
        else:
            cells.append(spreadsheet_safe(str(value)))
    return cells


# A spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV Injection"): a file named
# =HYPERLINK("http://...","x").jpg inside an uploaded zip would become a live link in a department's spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(text: str) -> str:
    """`text` as a CSV cell no spreadsheet runs: a leading single quote before a formula-like start (OWASP's advice;
    the quote shows in the cell, the rest of the text is kept as it was)."""
    return "'" + text if text.lstrip(" ").startswith(FORMULA_STARTS) else text


@dataclass(frozen=True)
class NewImage:
    """One file of an upload, as stored: becomes one Image row (`ingest_error` when it was refused).

    A DICOM file brings its UIDs, and the patient's identifiers only when the setting allows them.
    """

    seq: int
    path: str
    storage_key: str | None = None
    size_bytes: int | None = None
    ingest_error: str | None = None
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None


@dataclass(frozen=True)
class JobOrigin:
    """Where a job's images came from: an upload (the default), or a study the DICOM node received (its accession
    number and date, and the AE title that sent it)."""

    source: JobSource = JobSource.UPLOAD
    accession_number: str | None = None
    study_date: str | None = None
    sender_ae: str | None = None


UPLOADED = JobOrigin()


@dataclass(frozen=True)
class Outcome:
    """The outcome of one image under the job's model version: a prediction or an error.

    `in_distribution` and `ood_score` come from the checkpoint's out-of-distribution detector (None without one).
    """

    image_id: int
    prediction: str | None = None
    probability: float | None = None
    error: str | None = None
    in_distribution: bool | None = None
    ood_score: float | None = None
    # The storage key of the thumbnail the worker wrote for the image (the job page's reading list).
    thumbnail_key: str | None = None


@dataclass
class ChunkPlan:
    """What a worker is to do with a chunk: classify `images`, or split it, or nothing (`skipped` says why)."""

    version: ModelVersion | None = None
    images: list[Image] = field(default_factory=list)
    crashed: dict[int, int] = field(default_factory=dict)
    split: list[int] = field(default_factory=list)
    skipped: str | None = None


# ---------------------------------------------------------------- creation


def stored_image(seq: int, path: str, storage_key: str, size_bytes: int, file: Path, with_patient: bool) -> NewImage:
    """A stored file as an Image to be: a DICOM file brings the UIDs from its header (and the patient's identifiers
    only `with_patient`, the SHOW_PATIENT_IDENTIFIERS setting)."""
    ids = dicom.read_identifiers(file, with_patient)
    return NewImage(seq=seq, path=path, storage_key=storage_key, size_bytes=size_bytes,
                    **(ids.as_dict() if ids else {}))


def create_job(
    session: Session, job_id: str, name: str, model_version_id: int, images: Sequence[NewImage],
    owner_id: int | None = None, origin: JobOrigin = UPLOADED,
) -> Job:
    """Add a queued Job with one Image per entry (flushed, not committed: the caller commits, then dispatches)."""
    job = Job(id=job_id, status=JobStatus.QUEUED, name=name[:255], total=len(images),
              model_version_id=model_version_id, owner_id=owner_id, source=origin.source,
              accession_number=origin.accession_number, study_date=origin.study_date, sender_ae=origin.sender_ae)
    session.add(job)
    session.flush()
    # Core inserts in slices, not ORM objects: a 10,000-file job would otherwise hold 10,000 Image objects
    # in the caller's session.
    for start in range(0, len(images), _INSERT_SLICE):
        session.execute(insert(Image), [
            {"job_id": job_id, "seq": e.seq, "path": e.path, "storage_key": e.storage_key,
             "size_bytes": e.size_bytes, "ingest_error": e.ingest_error,
             "study_instance_uid": e.study_instance_uid, "sop_instance_uid": e.sop_instance_uid,
             "patient_name": e.patient_name, "patient_id": e.patient_id, "patient_birth_date": e.patient_birth_date}
            for e in images[start:start + _INSERT_SLICE]
        ])
    return job


# ---------------------------------------------------------------- dispatch


def pending_images(session: Session, job_id: str) -> list[int]:
    """Record ingest refusals as error outcomes, refresh progress, and return the images still to classify."""
    job = lock_job(session, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    if job.status in FINAL_JOB_STATUSES:
        return []
    images = session.execute(
        select(Image.id, Image.ingest_error).where(Image.job_id == job_id).order_by(Image.seq)
    ).all()
    refused = [Outcome(i, error=err) for i, err in images if err]
    _upsert(session, job_id, job.model_version_id, refused, overwrite=False)
    done = set(session.scalars(
        select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == job.model_version_id)
    ))
    refresh_progress(session, job)
    return [i for i, err in images if not err and i not in done]


def mark_dispatched(session: Session, job_id: str) -> None:
    """Note that the job's chunks are with the broker (and forget an earlier "broker down" message)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.enqueued_at = datetime.now(UTC)
        if job.error == BROKER_DOWN_MESSAGE:
            job.error = None


def mark_not_dispatched(session: Session, job_id: str) -> None:
    """Note that the job is saved but the broker could not take it; the reaper dispatches it later."""
    job = session.get(Job, job_id)
    if job is not None and job.status not in FINAL_JOB_STATUSES:
        job.error = BROKER_DOWN_MESSAGE


def unfinished_job_ids(session: Session) -> list[str]:
    """Jobs still queued or running, oldest first."""
    return list(session.scalars(
        select(Job.id).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING))).order_by(Job.created_at)
    ))


# ---------------------------------------------------------------- a worker's chunk


def plan_chunk(session: Session, job_id: str, image_ids: list[int], max_attempts: int, may_split: bool) -> ChunkPlan:
    """Decide what to do with a chunk and count an attempt on the images about to be classified.

    Images that already have a result are left out. A chunk seen before without finishing (its worker died) is
    to be split into single images when `may_split`, so one image that kills the worker cannot take the others
    down with it; images started `max_attempts` times are returned in `crashed` instead. The caller commits
    before the work, so a crash leaves the attempt counted.
    """
    job = session.get(Job, job_id)
    if job is None:
        return ChunkPlan(skipped="job no longer exists")
    if job.status in FINAL_JOB_STATUSES:
        return ChunkPlan(skipped=f"job is {job.status}")
    done = select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == job.model_version_id)
    attempts = {int(i): int(n or 0) for i, n in session.execute(
        select(Image.id, Image.attempts).where(Image.job_id == job_id, Image.id.in_(image_ids), Image.id.not_in(done))
    )}
    if not attempts:
        return ChunkPlan(skipped="every image already has a result")
    if may_split and len(attempts) > 1 and max(attempts.values()) > 0:
        return ChunkPlan(split=sorted(attempts))
    crashed = {i: n for i, n in attempts.items() if n >= max_attempts}
    todo = [i for i in attempts if i not in crashed]
    if todo:
        session.execute(update(Image).where(Image.id.in_(todo)).values(attempts=Image.attempts + 1))
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=datetime.now(UTC))
        )
    images = list(session.scalars(select(Image).where(Image.id.in_(todo)).order_by(Image.seq))) if todo else []
    version = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
    return ChunkPlan(version=version, images=images, crashed=crashed)


def crash_reason(attempts: int) -> str:
    """The error recorded for an image that kept killing its worker."""
    return f"the worker crashed {attempts} times while classifying this image; it is not retried again"


def record_outcomes(session: Session, job_id: str, version_id: int, outcomes: Sequence[Outcome]) -> None:
    """Upsert one Result per outcome (a re-run replaces it) and refresh the job's progress."""
    job = lock_job(session, job_id)
    if job is None:
        return
    _upsert(session, job_id, version_id, outcomes, overwrite=True)
    thumbnails = [{"id": o.image_id, "thumbnail_key": o.thumbnail_key} for o in outcomes if o.thumbnail_key]
    if thumbnails:
        session.execute(update(Image), thumbnails)  # bulk UPDATE by primary key
    refresh_progress(session, job)


def fail_images(session: Session, job_id: str, image_ids: Sequence[int], reason: str) -> None:
    """Give every image of `image_ids` still without an outcome an error row (a chunk that cannot finish)."""
    job = lock_job(session, job_id)
    if job is None:
        return
    _upsert(session, job_id, job.model_version_id, [Outcome(i, error=reason) for i in image_ids], overwrite=False)
    refresh_progress(session, job)


def fail_job(session: Session, job_id: str, reason: str) -> int | None:
    """End the job as failed (a job-level fault such as a bad model file); every image left gets the reason.

    Returns the number of images that got the error, or None when the job was already final or is gone.
    """
    job = lock_job(session, job_id)
    if job is None or job.status in FINAL_JOB_STATUSES:
        return None
    done = select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == job.model_version_id)
    missing = session.scalars(select(Image.id).where(Image.job_id == job_id, Image.id.not_in(done))).all()
    _upsert(session, job_id, job.model_version_id, [Outcome(i, error=reason) for i in missing], overwrite=False)
    now = datetime.now(UTC)
    job.status = JobStatus.FAILED
    job.error = reason
    job.started_at = job.started_at or now
    job.finished_at = now
    refresh_progress(session, job)
    _finished(session, job)
    return len(missing)


# ---------------------------------------------------------------- progress


def lock_job(session: Session, job_id: str) -> Job | None:
    """Load the job row locked for this transaction, so concurrent chunks count progress one at a time."""
    return session.scalars(select(Job).where(Job.id == job_id).with_for_update()).first()


def refresh_progress(session: Session, job: Job) -> None:
    """Recompute processed/failed/out_of_distribution from the job's Result rows; finish the job once every image
    has one.

    `processed` counts every image with an outcome (errors included), `failed` those whose outcome is an error,
    `out_of_distribution` those the model's detector flagged (in_distribution false).
    """
    session.flush()
    flagged = func.count(case((Result.in_distribution == false(), 1)))
    counts = session.execute(
        select(func.count(Result.id), func.count(Result.error), flagged).where(
            Result.job_id == job.id, Result.model_version_id == job.model_version_id
        )
    ).one()
    job.processed, job.failed, job.out_of_distribution = int(counts[0]), int(counts[1]), int(counts[2])
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and job.processed >= job.total:
        now = datetime.now(UTC)
        job.status = JobStatus.DONE
        job.started_at = job.started_at or now
        job.finished_at = now
        _finished(session, job)


def _finished(session: Session, job: Job) -> None:
    """Count the job's submit-to-final time in fracture_job_seconds and log the one line that says it ended
    (called once, at the move to a final status, under the job's lock)."""
    seconds = ((job.finished_at or datetime.now(UTC)) - job.created_at).total_seconds()
    latency.observe(session, latency.JOB, seconds, str(job.status))
    log.info("job %s %s: %d images, %d failed, %.1f s", job.id, job.status, job.processed, job.failed, seconds,
             extra={"job_id": job.id})


def _upsert(
    session: Session, job_id: str, version_id: int | None, outcomes: Sequence[Outcome], overwrite: bool
) -> None:
    """Insert one Result per outcome; an existing (image, model version) row is replaced, or kept if not `overwrite`."""
    if not outcomes:
        return
    now = datetime.now(UTC)
    values = [
        {"image_id": o.image_id, "job_id": job_id, "model_version_id": version_id, "prediction": o.prediction,
         "probability": o.probability, "in_distribution": o.in_distribution, "ood_score": o.ood_score,
         "error": o.error, "created_at": now}
        for o in outcomes
    ]
    stmt = insert_on_conflict(session, Result).values(values)
    keys = ["image_id", "model_version_id"]
    if overwrite:
        columns = ("prediction", "probability", "in_distribution", "ood_score", "error", "created_at")
        session.execute(stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns}))
    else:
        session.execute(stmt.on_conflict_do_nothing(index_elements=keys))
