"""Instances the DICOM node received: record each one once, and turn a study that went quiet into a job.

The only code that writes ReceivedInstance rows. The node (worker/dicom_node.py) calls `receive` in its C-STORE
handler and answers success only once that transaction committed; its loop calls `start_stable_studies`, which
makes each quiet study a job through the same `fracture.jobs.create_job` an upload goes through, then dispatches
it by id. A study's job takes the instances that no job has taken yet: the same study sent again records nothing
(so makes no second job), and an instance that arrives after its study's job was made starts a new job of the
late instances once the study is quiet again.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fracture import accounts, jobs, queue, registry
from fracture.config import Settings
from fracture.db import insert_on_conflict, session_scope
from fracture.dicom import clean_text
from fracture.dicom_reports import is_our_report
from fracture.models import JobSource, ReceivedInstance, new_id
from fracture.storage import Storage

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# Where received files are kept: by the SHA-256 of their bytes, so a retried write rewrites the same file.
STORAGE_PREFIX = "dicom"
_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Modality", "AccessionNumber", "StudyDate",
                "Manufacturer", "SoftwareVersions", "SeriesDescription", "ContributingEquipmentSequence"]


class Received(StrEnum):
    """What `receive` did with an instance; every one of these is answered "success" to the sender."""

    STORED = "stored"
    # The same SOP Instance UID with the same bytes: already kept.
    DUPLICATE = "duplicate"
    # The same SOP Instance UID with other bytes: the first copy is kept (see `receive`).
    CONFLICT = "conflict"
    # One of our own reports coming back (the PACS forwards the whole study): not an X-ray to classify.
    OURS = "ours"


class NotAnInstance(ValueError):
    """The bytes received are no DICOM data set with a SOP Instance UID and a Study Instance UID."""


@dataclass(frozen=True)
class Header:
    """What the intake reads of an instance's header (its pixels are never read here)."""

    sop_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str = ""
    modality: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    manufacturer: str | None = None
    software_versions: str | None = None
    series_description: str | None = None
    # A report or heatmap capture this system wrote (fracture.dicom_reports.is_our_report): coming back, not classified.
    ours: bool = False


def read_header(data: bytes) -> Header:
    """The header of a DICOM file (preamble and file meta included), or raise NotAnInstance."""
    from pydicom import dcmread

    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        values = {tag: ds.get(tag) for tag in _HEADER_TAGS}
        ours = is_our_report(ds)
    except Exception as e:  # pydicom raises many types on a damaged header
        raise NotAnInstance(f"not a readable DICOM data set: {e}") from None
    sop, study = clean_text(values["SOPInstanceUID"], 64), clean_text(values["StudyInstanceUID"], 64)
    if sop is None or study is None:
        raise NotAnInstance("the data set has no SOP Instance UID or no Study Instance UID")
    software = values["SoftwareVersions"]
    if software is not None and not isinstance(software, str):
        software = "\\".join(map(str, software))  # multi-valued (LO, VM 1-n)
    return Header(
        sop_instance_uid=sop, study_instance_uid=study, sop_class_uid=clean_text(values["SOPClassUID"], 64) or "",
        modality=clean_text(values["Modality"], 16), accession_number=clean_text(values["AccessionNumber"], 16),
        study_date=clean_text(values["StudyDate"], 8), manufacturer=clean_text(values["Manufacturer"], 64),
        software_versions=clean_text(software, 64), series_description=clean_text(values["SeriesDescription"], 64),
        ours=ours,
    )


def storage_key(sha256: str) -> str:
    return f"{STORAGE_PREFIX}/{sha256[:2]}/{sha256}"


def receive(session: Session, storage: Storage, data: bytes, calling_ae: str) -> Received:
    """Keep a received DICOM file (on disk, synced) and record it in `session` (the caller commits, then answers
    the sender); raise NotAnInstance for bytes that are no instance.

    Idempotent by SOP Instance UID. The same UID with other bytes keeps the first copy and logs the second: a UID
    names one instance, and a change to its pixels must come with a new UID (PS3.3 C.12.1.1.1), so other bytes
    under the same UID are the same image encoded again (another transfer syntax, a header element the sender
    rewrote). Classifying it again would only give the study a second job for an image it already has.
    """
    header = read_header(data)
    if header.ours:
        return Received.OURS
    digest = hashlib.sha256(data).hexdigest()
    known = session.scalars(
        select(ReceivedInstance.sha256).where(ReceivedInstance.sop_instance_uid == header.sop_instance_uid)
    ).first()
    if known is not None:
        return _again(header, calling_ae, known, digest)
    key = storage_key(digest)
    storage.write_bytes(key, data, durable=True)
    stmt = insert_on_conflict(session, ReceivedInstance).values(
        sop_instance_uid=header.sop_instance_uid, study_instance_uid=header.study_instance_uid,
        calling_ae=calling_ae[:16], storage_key=key, sha256=digest, size_bytes=len(data),
        accession_number=header.accession_number, study_date=header.study_date, modality=header.modality,
        received_at=datetime.now(UTC),
    ).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    if session.execute(stmt).rowcount == 0:  # type: ignore[attr-defined]  # another association got it first
        return Received.DUPLICATE
    return Received.STORED


def _again(header: Header, calling_ae: str, known: str, digest: str) -> Received:
    if known == digest:
        return Received.DUPLICATE
    log.warning("%s sent instance %s of study %s again with other bytes (sha256 %s, kept %s): the first copy is "
                "kept", calling_ae, header.sop_instance_uid, header.study_instance_uid, digest, known)
    return Received.CONFLICT


# ---------------------------------------------------------------- studies into jobs


def stable_studies(session: Session, quiet_s: float, now: datetime | None = None) -> list[str]:
    """The studies with instances not yet in a job and none of them received in the last `quiet_s` seconds,
    the longest waiting first."""
    now = now or datetime.now(UTC)
    rows = session.execute(
        select(ReceivedInstance.study_instance_uid, func.min(ReceivedInstance.received_at),
               func.max(ReceivedInstance.received_at))
        .where(ReceivedInstance.job_id.is_(None))
        .group_by(ReceivedInstance.study_instance_uid)
    ).all()
    # Compared here, not in SQL: the aware datetimes come back the same from SQLite and PostgreSQL.
    quiet = [(first, study) for study, first, last in rows if now - last >= timedelta(seconds=quiet_s)]
    return [study for _, study in sorted(quiet)]


class StudyTaken(RuntimeError):
    """Another process made a job of some of the study's instances meanwhile (the transaction is rolled back)."""


def create_study_job(session: Session, settings: Settings, study_uid: str) -> str | None:
    """Make a queued job of the study's instances not yet in a job, owned by DICOM_OWNER (flushed; the caller
    commits, then dispatches). None when there is nothing to do or no active model (the instances wait)."""
    rows = list(session.scalars(
        select(ReceivedInstance)
        .where(ReceivedInstance.study_instance_uid == study_uid, ReceivedInstance.job_id.is_(None))
        .order_by(ReceivedInstance.received_at, ReceivedInstance.id)
    ))
    if not rows:
        return None
    model = registry.ensure_seed_model(session, settings)
    if model is None:
        log.warning("study %s waits: no model is active (jobs are refused until one is)", study_uid)
        return None
    owner = accounts.ensure_service_user(session, settings.dicom_owner)
    storage = Storage(settings.storage_dir)
    entries = [
        jobs.stored_image(seq, f"{row.sop_instance_uid}.dcm", row.storage_key, row.size_bytes,
                          storage.path(row.storage_key), settings.show_patient_identifiers)
        for seq, row in enumerate(rows, start=1)
    ]
    first = rows[0]
    origin = jobs.JobOrigin(JobSource.DICOM, accession_number=first.accession_number, study_date=first.study_date,
                            sender_ae=first.calling_ae)
    job_id = new_id()
    jobs.create_job(session, job_id, job_name(first.accession_number or study_uid, first.calling_ae, len(rows)),
                    model.id, entries, owner.id, origin)
    claimed = session.execute(
        update(ReceivedInstance)
        .where(ReceivedInstance.id.in_([row.id for row in rows]), ReceivedInstance.job_id.is_(None))
        .values(job_id=job_id)
    ).rowcount  # type: ignore[attr-defined]
    if claimed != len(rows):
        raise StudyTaken(f"study {study_uid}: another node took {len(rows) - claimed} of its instances")
    return job_id


def job_name(study: str, sender: str, files: int) -> str:
    """"DICOM A1234 from PACS (3 files)": the study (its accession number, else its UID) and who sent it."""
    return f"DICOM {study} from {sender} ({files} file{'s' if files != 1 else ''})"


def start_stable_studies(settings: Settings, app: Celery, now: datetime | None = None) -> list[str]:
    """Make a job of every quiet study and dispatch it by id; return the new jobs' ids.

    A job committed but not dispatched (the broker is down) keeps the reason and is dispatched by the reaper.
    """
    with session_scope(settings.database_url) as session:
        studies = stable_studies(session, settings.dicom_study_quiet_s, now)
    made = []
    for study_uid in studies:
        try:
            with session_scope(settings.database_url) as session:
                job_id = create_study_job(session, settings, study_uid)
        except StudyTaken as e:
            log.info("%s", e)
            continue
        if job_id is None:
            continue
        made.append(job_id)
        log.info("study %s is job %s", study_uid, job_id, extra={"job_id": job_id})
        try:
            queue.dispatch_job(app, settings, job_id)
        except queue.BrokerUnavailable as e:
            log.warning("job %s is saved but not dispatched (%s); the reaper dispatches it later", job_id, e)
    return made
