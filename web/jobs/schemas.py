"""The jobs API's shapes, declared once: they serialise the answers, validate the requests and describe both."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from marshmallow.validate import Range

from fracture.models import FINAL_JOB_STATUSES, Job, JobStatus
from web.jobs.queries import REVIEW_STATES, SORTS
from web.openapi import one_of, row_id
from web.timefmt import Lifetime, Timestamp

LABELS = ("fractured", "not fractured")
TRUE_FALSE = ("true", "false", "1", "0", "all", "")


class JobSchema(Lifetime):
    """A job: its progress (every image with an outcome counts, errors included), elapsed time and linear ETA."""

    id = f.String(required=True)
    name = f.String(allow_none=True)
    status = f.String(required=True, validate=one_of([s.value for s in JobStatus]))
    total = f.Integer(required=True)
    processed = f.Integer(required=True)
    failed = f.Integer(required=True)
    classified = f.Integer(required=True)
    out_of_distribution = f.Integer(
        required=True, metadata={"description": "Results the model's detector flagged as unlike its training data."})
    model_version = f.String(allow_none=True)
    error = f.String(allow_none=True)
    elapsed_s = f.Float(allow_none=True)
    eta_s = f.Float(allow_none=True)
    final = f.Boolean(required=True)
    source = f.String(required=True, metadata={"enum": ["upload", "dicom"]})
    accession_number = f.String(allow_none=True, metadata={"description": "A study from the PACS: its accession."})
    study_date = f.String(allow_none=True, metadata={"description": "A study from the PACS: its date (YYYYMMDD)."})
    sender_ae = f.String(allow_none=True, metadata={"description": "A study from the PACS: the AE that sent it."})

    @ma.pre_dump
    def _derive(self, job: Job, **_: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        started, finished = job.started_at, job.finished_at
        elapsed = ((finished or now) - started).total_seconds() if started else None
        eta = None
        if job.status in FINAL_JOB_STATUSES:
            eta = 0.0
        elif elapsed is not None and 0 < job.processed < job.total:
            eta = round(elapsed / job.processed * (job.total - job.processed), 1)
        return {
            "id": job.id, "name": job.name, "status": job.status, "total": job.total, "processed": job.processed,
            "failed": job.failed, "classified": job.processed - job.failed,
            "out_of_distribution": job.out_of_distribution or 0,
            "model_version": job.model_version.name if job.model_version else None, "error": job.error,
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "elapsed_s": round(elapsed, 1) if elapsed is not None else None, "eta_s": eta,
            "final": job.status in FINAL_JOB_STATUSES, "source": job.source or "upload",
            "accession_number": job.accession_number, "study_date": job.study_date, "sender_ae": job.sender_ae,
        }


def job_json(job: Job) -> dict[str, Any]:
    """A job as the API and the pages show it."""
    out: dict[str, Any] = JobSchema().dump(job)
    return out


class JobListSchema(ma.Schema):
    jobs = f.List(f.Nested(JobSchema), required=True)


class JobListQuery(ma.Schema):
    limit = f.Integer(load_default=100, validate=Range(1, 1000), metadata={"description": "At most 1000."})


class JobCreatedSchema(ma.Schema):
    id = f.String(required=True)
    status = f.String(required=True)
    total = f.Integer(required=True)


class UploadSchema(ma.Schema):
    files = f.List(f.Raw(metadata={"type": "string", "format": "binary"}), required=True, metadata={
        "description": "One or more parts named 'files': images (PNG, JPEG, DICOM...) or zip archives of them."})


class JobNotSentSchema(JobSchema):
    """A job committed but not handed to the broker: POST .../dispatch sends it again."""

    error = f.String(required=True)


class ReviewSchema(ma.Schema):
    image_id = f.Integer(required=True)
    label = f.String(required=True)
    prediction = f.String(allow_none=True)
    correct = f.Boolean(allow_none=True)
    reviewer = f.String(allow_none=True)
    reviewed_at = f.String(allow_none=True, metadata={"format": "date-time"})


class RowReviewSchema(ma.Schema):
    label = f.String(required=True)
    correct = f.Boolean(allow_none=True)
    reviewer = f.String(allow_none=True)
    reviewed_at = f.String(allow_none=True, metadata={"format": "date-time"})


class ResultRowSchema(ma.Schema):
    """One image of a job and, once classified, its result (the CSV has the same fields)."""

    image_id = f.Integer(required=True)
    seq = f.Integer(required=True)
    path = f.String(required=True)
    prediction = f.String(allow_none=True, validate=one_of(LABELS))
    probability = f.Float(allow_none=True, metadata={"description": "Probability of fracture, 0-1."})
    in_distribution = f.Boolean(allow_none=True)
    ood_score = f.Float(allow_none=True)
    model_version = f.String(allow_none=True)
    error = f.String(allow_none=True)
    study_instance_uid = f.String(allow_none=True)
    sop_instance_uid = f.String(allow_none=True)
    thumbnail_url = f.String(allow_none=True)
    review = f.Nested(RowReviewSchema, allow_none=True)
    patient_name = f.String(allow_none=True, metadata={"description": "Only with SHOW_PATIENT_IDENTIFIERS=1."})
    patient_id = f.String(allow_none=True, metadata={"description": "Only with SHOW_PATIENT_IDENTIFIERS=1."})
    patient_birth_date = f.String(allow_none=True, metadata={"description": "Only with SHOW_PATIENT_IDENTIFIERS=1."})


class RowFilterQuery(ma.Schema):
    """The job page's filters and order, also the results API's."""

    prediction = f.String(validate=one_of(LABELS))
    uncertain = f.String(validate=one_of(TRUE_FALSE), metadata={"description": "Near the decision threshold."})
    in_distribution = f.String(validate=one_of(TRUE_FALSE))
    flag = f.String(validate=one_of(("ood", "")), metadata={"description": "'ood': only the flagged images."})
    error = f.String(validate=one_of(TRUE_FALSE))
    review = f.String(validate=one_of(REVIEW_STATES))
    sort = f.String(validate=one_of(SORTS))


MAX_ROWS = 2**31 - 1  # beyond any job, and within every database's integer


class ResultsQuery(RowFilterQuery):
    offset = f.Integer(load_default=0, validate=Range(0, MAX_ROWS))
    limit = f.Integer(validate=Range(0, MAX_ROWS))


class CsvQuery(ma.Schema):
    in_distribution = f.String(validate=one_of(TRUE_FALSE))


class ResultsPageSchema(ma.Schema):
    job_id = f.String(required=True)
    total = f.Integer(required=True)
    offset = f.Integer(required=True)
    results = f.List(f.Nested(ResultRowSchema), required=True)
    matching = f.Integer(metadata={"description": "With a filter: how many rows match it."})
    prediction = f.String()
    uncertain = f.String()
    flag = f.String()
    in_distribution = f.Raw()
    error = f.String()
    review = f.String()
    sort = f.String()


class HistogramSchema(ma.Schema):
    bins = f.Integer(required=True)
    edges = f.List(f.Float(), required=True)
    counts = f.List(f.Integer(), required=True)


class SummarySchema(ma.Schema):
    """Counts by call, flag, error and review, and a histogram of the probabilities with the threshold."""

    job_id = f.String(required=True)
    status = f.String(required=True)
    total = f.Integer(required=True)
    processed = f.Integer(required=True)
    predictions = f.Dict(keys=f.String(), values=f.Integer(), required=True)
    fractured = f.Integer(required=True)
    not_fractured = f.Integer(required=True)
    out_of_distribution = f.Integer(required=True)
    errors = f.Integer(required=True)
    uncertain = f.Integer(required=True)
    uncertain_margin = f.Float(required=True)
    reviewed = f.Integer(required=True)
    reviewed_correct = f.Integer(required=True)
    reviewed_wrong = f.Integer(required=True)
    threshold = f.Float(allow_none=True)
    histogram = f.Nested(HistogramSchema, required=True)


class ProgressSchema(ma.Schema):
    total = f.Integer(required=True)
    reviewed = f.Integer(required=True)
    correct = f.Integer(required=True)
    wrong = f.Integer(required=True)


class ReviewBody(ma.Schema):
    # Checked by fracture.reviews against the job's model, whose refusal names the labels it takes.
    label = f.Raw(load_default=None, metadata={"type": "string",
                                               "description": "The right label: one of the model's two classes."})


class ReviewAnswerSchema(ma.Schema):
    review = f.Nested(ReviewSchema, allow_none=True)
    cleared = f.Boolean()
    progress = f.Nested(ProgressSchema, required=True)


class ReviewListSchema(ma.Schema):
    job_id = f.String(required=True)
    progress = f.Nested(ProgressSchema, required=True)
    reviews = f.List(f.Nested(ReviewSchema), required=True)


class AddToDatasetBody(ma.Schema):
    dataset_id = row_id(required=True, metadata={"description": "A ready training dataset."})


class AdditionSchema(ma.Schema):
    """What adding a job's reviewed images to a training dataset did, image by image."""

    dataset_id = f.Integer(required=True)
    dataset = f.String(required=True)
    counts = f.Dict(keys=f.String(), values=f.Integer(), required=True)
    added = f.List(f.Dict(), required=True)
    already_in_dataset = f.List(f.Dict(), required=True)
    kept_out_locked = f.List(f.Dict(), required=True)
    skipped = f.List(f.Dict(), required=True)


class HeatmapQuery(ma.Schema):
    download = f.String(validate=one_of(("1", "true", "yes", "0", "false", "no", "")),
                        metadata={"description": "1: the image with the overlay drawn on, as an attachment."})


class PendingSchema(ma.Schema):
    status = f.String(required=True)


class DeliverySchema(ma.Schema):
    """One DICOM object of the job's results (the study's SR, or an image's heatmap capture) for one PACS peer."""

    id = f.Integer(required=True)
    peer = f.String(required=True, metadata={"description": "The peer's AE title (DICOM_SEND_RESULTS_TO)."})
    kind = f.String(required=True, metadata={"enum": ["report", "heatmap"]})
    sop_instance_uid = f.String(required=True)
    status = f.String(required=True, metadata={"enum": ["queued", "sent", "failed"]})
    attempts = f.Integer(required=True)
    last_error = f.String(allow_none=True)
    created_at = Timestamp()
    sent_at = Timestamp()


class DeliveryListSchema(ma.Schema):
    job_id = f.String(required=True)
    deliveries = f.List(f.Nested(DeliverySchema), required=True)
