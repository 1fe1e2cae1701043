"""Accept an upload as a job: ingest the files, commit Job + Image rows, then enqueue by id."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fracture import jobs, logs, queue
from fracture.jobs import BROKER_DOWN_MESSAGE
from fracture.models import Job, new_id
from web.context import NO_MODEL_MESSAGE, active_model, celery, db, settings, storage
from web.jobs.ingest import FilePart, Upload, UploadRefused, ingest_parts

log = logging.getLogger(__name__)


def _nothing_usable(upload: Upload) -> str:
    if not upload.entries:
        if upload.skipped:
            return f"The upload holds no images: only {upload.skipped} system file(s) such as .DS_Store or __MACOSX."
        return "The upload holds no files. Choose a folder, image files or zip archives."
    shown = "; ".join(f"{e.path}: {e.ingest_error}" for e in upload.entries[:5])
    more = f" (and {len(upload.entries) - 5} more)" if len(upload.entries) > 5 else ""
    return f"The upload holds no images that can be classified: {shown}{more}."


def job_name(upload: Upload) -> str:
    """Name a job after what was uploaded (the zip's name, the chosen folder's), never a folder inside a zip.

    "xrays40 (40 files)" for xrays40.zip holding fractured/ and not fractured/; "a and 2 more (12 files)" when
    several zips, folders or loose files came together; a single loose file keeps its own name.
    """
    sources = [s[:200] for s in upload.sources or [upload.entries[0].path]]  # the column holds 255 characters
    name = sources[0] if len(sources) == 1 else f"{sources[0]} and {len(sources) - 1} more"
    files = len(upload.entries)
    return f"{name} ({files} files)" if files > 1 else name


def create_job(parts: Iterable[FilePart], owner_id: int | None = None) -> Job:
    """Store the upload and commit rows owned by `owner_id`, THEN enqueue; raise UploadRefused or BrokerUnavailable."""
    model = active_model()
    if model is None:
        raise UploadRefused(NO_MODEL_MESSAGE, 409)
    job_id = new_id()
    store = storage()
    upload = ingest_parts(parts, store, settings(), job_id)
    if upload.usable == 0:
        store.delete_prefix(f"uploads/{job_id}")
        raise UploadRefused(_nothing_usable(upload), 400)
    session = db()
    try:
        # All in the job's one transaction, so a half-written job is never seen.
        job = jobs.create_job(session, job_id, job_name(upload), model.id, upload.entries, owner_id)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete_prefix(f"uploads/{job_id}")
        raise
    logs.bind(job_id=job_id)  # this request's lines from here on are about the job (cleared after the request)
    log.info("job %s created: %d files, %d to classify, model %s", job_id, len(upload.entries), upload.usable,
             model.name, extra={"images": len(upload.entries)})
    dispatch(job)
    return job


def dispatch(job: Job) -> None:
    """Hand a committed job to the broker; on failure (recorded on the job) raise BrokerUnavailable (its subject:
    the job)."""
    try:
        queue.dispatch_job(celery(), settings(), job.id)
    except queue.BrokerUnavailable as exc:
        db().refresh(job)
        raise queue.BrokerUnavailable(BROKER_DOWN_MESSAGE, job) from exc
    db().refresh(job)
