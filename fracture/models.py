"""The database schema: jobs, images and their results, model versions, training runs, schedules, users."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fracture.dbtypes import UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex



# The largest row id: PostgreSQL's integer. A bigger number names no row (and must never reach the driver).
MAX_ROW_ID = 2**31 - 1

class Base(DeclarativeBase):
    # Every datetime column stores UTC and reads back aware UTC, SQLite included (fracture.dbtypes).
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class JobStatus(StrEnum):
    """Where an upload job stands; fracture.jobs is the only code that moves it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATUSES


FINAL_JOB_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class JobSource(StrEnum):
    """How a job's images came in: uploaded (web, API), or received from the PACS by the DICOM node."""

    UPLOAD = "upload"
    DICOM = "dicom"


class RunStatus(StrEnum):
    """Where a training run stands; fracture.trainings is the only code that moves it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_RUN_STATUSES = frozenset({RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED})


class ModelStatus(StrEnum):
    """A model version's place in the registry: one active version serves new jobs."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"


class DatasetRole(StrEnum):
    """What a dataset may be used for: training, or evaluation only (locked: never trained on)."""

    TRAINING = "training"
    EVALUATION = "evaluation"


class DatasetStatus(StrEnum):
    """Whether a dataset has been validated and can be used."""

    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.CANDIDATE, index=True)
    arch: Mapped[str] = mapped_column(String(64))
    checkpoint_key: Mapped[str] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    # The names the checkpoint predicts (its classes), read at registration: the labels a reader may give.
    classes: Mapped[list[str] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))
    split_policy: Mapped[str | None] = mapped_column(String(16))
    selection_metric: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    retired_at: Mapped[datetime | None] = mapped_column()
    # Why the last automatic (or manual) decision about this version was taken, in one readable sentence.
    decision: Mapped[str | None] = mapped_column(Text)


class ModelActivation(Base):
    """One time a version became the active one: the history a rollback walks back through (fracture.registry)."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when a rollback undid this activation: a later rollback never comes back to it, so rollbacks never toggle.
    rolled_back_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Results its model's detector flagged out of distribution (recomputed with processed and failed).
    out_of_distribution: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    enqueued_at: Mapped[datetime | None] = mapped_column()
    # The user who uploaded it; jobs made outside the web (tests, scripts) may have none: admins see those.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    source: Mapped[str] = mapped_column(String(16), default=JobSource.UPLOAD, server_default=JobSource.UPLOAD.value)
    # A job of a study the DICOM node received: the study's accession number and date, and the AE that sent it.
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    sender_ae: Mapped[str | None] = mapped_column(String(16))
    # When its results were turned into DICOM objects for the PACS peers (a DICOM job, once final; fracture.deliveries).
    reported_at: Mapped[datetime | None] = mapped_column()

    model_version: Mapped[ModelVersion | None] = relationship()
    images: Mapped[list[Image]] = relationship(back_populates="job", order_by="Image.seq")


class Image(Base):
    """One uploaded file of a job; `path` is its relative name for display only, never a disk path."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    # An ingest-time problem (not an image, unsafe zip member): no task will ever process it.
    ingest_error: Mapped[str | None] = mapped_column(Text)
    # How many times a worker has started on this image: bounds redelivery of a chunk that kills its worker.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # From a DICOM file's header at upload (None for other images): its study and its own instance.
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    # The patient's identifiers: written only while SHOW_PATIENT_IDENTIFIERS is on, shown only while it is.
    patient_name: Mapped[str | None] = mapped_column(String(255))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    # A small JPEG the worker wrote while classifying (storage key), for the job page's reading list.
    thumbnail_key: Mapped[str | None] = mapped_column(String(255))

    job: Mapped[Job] = relationship(back_populates="images")


class ReceivedInstance(Base):
    """A DICOM instance the node received and stored (fracture.dicom_intake is the only code that writes these).

    One row per SOP Instance UID: the same instance sent again records nothing. `job_id` is set once the
    instance's study became a job; instances still without one are what the next job of the study takes.
    """

    __tablename__ = "received_instances"
    __table_args__ = (Index("ix_received_instances_study_job", "study_instance_uid", "job_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # From the header, for the job and its name; bounded as their value representations are (SH, DA, CS).
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modality: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)


class Result(Base):
    """The outcome of one image under one model version; upserted, so re-running writes nothing twice."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("image_id", "model_version_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    prediction: Mapped[str | None] = mapped_column(String(32))
    probability: Mapped[float | None] = mapped_column(Float)
    # From the checkpoint's out-of-distribution detector; both None when the model has none (or on an error).
    # `ood_score` is the distance relative to the detector's threshold: 1 or more means not in distribution.
    in_distribution: Mapped[bool | None] = mapped_column(Boolean)
    ood_score: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HeatmapStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Heatmap(Base):
    """Where the model looked in one image, under one model version: asked for, computed once, kept in storage."""

    __tablename__ = "heatmaps"
    __table_args__ = (UniqueConstraint("image_id", "model_version_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default=HeatmapStatus.PENDING)
    storage_key: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    # Sent to the interactive queue (someone asked for it), not behind the chunks (HEATMAPS_ABOVE_THRESHOLD).
    interactive: Mapped[bool] = mapped_column(default=False, server_default=sa_false())


class Review(Base):
    """A reader's verdict on one image's prediction: the right label, who gave it and when (the latest counts)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(32))
    # The prediction the reader judged, and whether the reader agreed with it.
    prediction: Mapped[str | None] = mapped_column(String(32))
    correct: Mapped[bool] = mapped_column(Boolean)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetAddition(Base):
    """A reviewed image added to a training dataset with its reviewed label; its file is copied into storage.

    Unique per dataset by MD5, so the same X-ray is never added twice.
    """

    __tablename__ = "dataset_additions"
    __table_args__ = (UniqueConstraint("dataset_id", "md5"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(255))
    md5: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(32))
    # Where it came from (kept as plain values: the job may be deleted later, the copy stays).
    source_job_id: Mapped[str | None] = mapped_column(String(32))
    source_image_id: Mapped[int | None] = mapped_column(Integer)
    source_path: Mapped[str | None] = mapped_column(Text)
    added_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    history: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id"))
    # Set by a cancel request; the trainer checks it after every epoch and ends the run `cancelled`.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # The run's log file in storage (the traceback of a failed run goes there, not to the page).
    log_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Written every HEARTBEAT_INTERVAL_S by the trainer while it runs; the reaper fails a run whose beats stopped.
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class Schedule(Base):
    """A retraining schedule kept in the database; the beat's tick enqueues it when due."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    # every (interval_minutes) | daily (time_of_day) | weekly (weekday 0=Monday, time_of_day) | cron (cron)
    kind: Mapped[str] = mapped_column(String(16), default="every", server_default="every")
    interval_minutes: Mapped[int | None] = mapped_column(Integer)
    time_of_day: Mapped[str | None] = mapped_column(String(5))
    weekday: Mapped[int | None] = mapped_column(Integer)
    cron: Mapped[str | None] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # The datasets and recipe of the runs it starts.
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    last_run_at: Mapped[datetime | None] = mapped_column()
    next_run_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleFiring(Base):
    """One due time of a schedule that started a run: unique, so a due time starts exactly one run."""

    __tablename__ = "schedule_firings"
    __table_args__ = (UniqueConstraint("schedule_id", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column()
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A registered labelled dataset: a folder on the server (under DATASET_ROOTS) or an upload in storage.

    `root` is the folder read (a registered server folder, or the storage folder an upload was unpacked into);
    a part split off another dataset reads its parent's root, limited to the relative paths in `members`.
    """

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=DatasetRole.TRAINING)
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.VALIDATING, index=True)
    source: Mapped[str] = mapped_column(String(16))
    root: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    members: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # An evaluation dataset that gates automatic promotion.
    gate: Mapped[bool] = mapped_column(Boolean, default=False)
    layout: Mapped[str | None] = mapped_column(String(16))
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    thumbnails: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    validated_at: Mapped[datetime | None] = mapped_column()
    # Set when a trainer starts validating it and every HEARTBEAT_INTERVAL_S after; None while it waits in the queue.
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class Evaluation(Base):
    """A model version measured on a registered dataset (all of it, or one split): metrics and plots."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    split: Mapped[str | None] = mapped_column(String(16))
    # Also run the robustness audit (the figures under other departments' acquisition changes: trainer.robustness).
    audit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    plots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # Written every HEARTBEAT_INTERVAL_S by the trainer while it measures; the reaper fails one whose beats stopped.
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class User(Base):
    """An account; the password is kept only as an Argon2id hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", order_by="ApiToken.id")


class ApiToken(Base):
    """A bearer token for the JSON API; only its SHA-256 is stored, so a database leak reveals no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="default")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship(back_populates="tokens")


class AuditEntry(Base):
    """One admin action, kept for the audit log: who did what to which thing, when, and the particulars."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))  # a username, or "cli" / "trainer" / "system"
    action: Mapped[str] = mapped_column(String(64), index=True)  # "user.create", "model.promote", ...
    subject: Mapped[str] = mapped_column(String(255))  # what it was done to: a username, a version, a dataset
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LoginFailure(Base):
    """One failed login; counted per (username, address) in a time window, so every web process sees them."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_created_at", "username", "created_at"),
        Index("ix_login_failures_address_created_at", "address", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryStatus(StrEnum):
    """Where one object's delivery to one peer stands; fracture.deliveries is the only code that moves it."""

    QUEUED = "queued"  # waiting for its (next) attempt
    SENT = "sent"  # the peer acknowledged it: never sent to that peer again
    FAILED = "failed"  # every attempt of the retry window failed (an admin may send it again)


class Delivery(Base):
    """One DICOM object of a job's results (its report, or an image's heatmap capture) for one peer."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "peer", "sop_instance_uid", name="uq_deliveries_job_peer_sop"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    peer: Mapped[str] = mapped_column(String(16))  # the AE title of a DICOM_SEND_RESULTS_TO peer
    kind: Mapped[str] = mapped_column(String(16))  # "report" (the study's SR) or "heatmap" (a Secondary Capture)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class LatencyBucket(Base):
    """The observations of one latency histogram that fell in one of its buckets: how many and their sum in
    seconds (fracture.latency increments them; /metrics makes the cumulative buckets at scrape time)."""

    __tablename__ = "latency_buckets"

    metric: Mapped[str] = mapped_column(String(64), primary_key=True)  # e.g. "fracture_chunk_seconds"
    label: Mapped[str] = mapped_column(String(64), primary_key=True)  # the series' label value ("" when none)
    le: Mapped[str] = mapped_column(String(16), primary_key=True)  # the bucket's upper bound as Prometheus writes it
    observations: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
