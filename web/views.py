"""Read models for pages, JSON and CSV: jobs, result rows and model versions as plain dicts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import url_for
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased, object_session

from fracture.evaluations import evaluations_with_names
from fracture.jobs import PATIENT_COLUMNS
from fracture.models import FINAL_JOB_STATUSES, Evaluation, Image, Job, ModelVersion, Result


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def iso(value: datetime | None) -> str | None:
    value = aware(value)
    return value.isoformat() if value is not None else None


def job_dict(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """The shape of `GET /api/jobs/<id>`, with elapsed time and a naive linear ETA."""
    now = now or datetime.now(UTC)
    started, finished = aware(job.started_at), aware(job.finished_at)
    elapsed = ((finished or now) - started).total_seconds() if started else None
    done = job.processed  # the worker counts every image with an outcome, errors included
    eta = None
    if job.status in FINAL_JOB_STATUSES:
        eta = 0.0
    elif elapsed is not None and 0 < done < job.total:
        eta = round(elapsed / done * (job.total - done), 1)
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "total": job.total,
        "processed": job.processed,
        "failed": job.failed,
        "classified": job.processed - job.failed,
        # Results the model's detector flagged as unlike its training data (0 when the model has no detector).
        "out_of_distribution": job.out_of_distribution or 0,
        "model_version": job.model_version.name if job.model_version else None,
        "error": job.error,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
        "eta_s": eta,
        "final": job.status in FINAL_JOB_STATUSES,
    }


def result_rows(
    session: Session, job: Job, offset: int = 0, limit: int | None = None, in_distribution: bool | None = None,
    patient: bool = False,
) -> list[dict[str, Any]]:
    """One row per image of `job`, in upload order; images without a result yet have no prediction.

    With `in_distribution` True or False, only the images whose result the detector found so. The patient's
    identifiers are in the rows only with `patient` (the SHOW_PATIENT_IDENTIFIERS setting), never otherwise.
    """
    return list(_rows(session, job, offset, limit, in_distribution, patient))


def iter_result_rows(
    session: Session, job: Job, batch: int = 1000, in_distribution: bool | None = None, patient: bool = False,
) -> Iterator[dict[str, Any]]:
    """Every row of `job` (or those `in_distribution` selects), in batches: a 20 000-image CSV never sits in memory."""
    offset = 0
    while True:
        rows = result_rows(session, job, offset, batch, in_distribution, patient)
        yield from rows
        if len(rows) < batch:
            return
        offset += batch


def _rows(
    session: Session, job: Job, offset: int, limit: int | None, in_distribution: bool | None, patient: bool,
) -> Iterator[dict[str, Any]]:
    version = aliased(ModelVersion)
    # The job pins its model version; a result under another version (an old re-run) is not this job's.
    on = and_(Result.image_id == Image.id, Result.model_version_id == job.model_version_id)
    # Plain columns, not ORM entities: a request's session would otherwise keep every row it streamed
    # (two objects per image) until the end of a 10,000-row CSV.
    stmt = (
        select(Image.id, Image.seq, Image.path, Image.ingest_error, Result.prediction, Result.probability,
               Result.in_distribution, Result.ood_score, Result.error, version.name, Image.study_instance_uid,
               Image.sop_instance_uid, Image.patient_name, Image.patient_id, Image.patient_birth_date)
        .outerjoin(Result, on)
        .outerjoin(version, version.id == Result.model_version_id)
        .where(Image.job_id == job.id)
        .order_by(Image.seq)
        .offset(offset)
    )
    if in_distribution is not None:
        stmt = stmt.where(Result.in_distribution == in_distribution)
    if limit is not None:
        stmt = stmt.limit(limit)
    for (image_id, seq, path, ingest_error, prediction, probability, in_dist, ood_score, error, version_name,
         study_uid, sop_uid, *patient_values) in session.execute(stmt):
        row = {
            "image_id": image_id,
            "seq": seq,
            "path": path,
            "prediction": prediction,
            "probability": probability,
            "in_distribution": in_dist,
            "ood_score": ood_score,
            "model_version": version_name,
            "error": error or ingest_error,
            "study_instance_uid": study_uid,
            "sop_instance_uid": sop_uid,
        }
        if patient:
            row.update(zip(PATIENT_COLUMNS, patient_values, strict=True))
        yield row


def _scalar(value: object) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def metric_table(metrics: dict[str, Any]) -> tuple[list[str], list[tuple[str, dict[str, Any]]], list[tuple[str, Any]]]:
    """Split metrics into a per-split table (columns, rows) and the remaining top-level scalars."""
    columns: list[str] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    flat: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            scalars = {k: v for k, v in value.items() if _scalar(v)}
            columns += [k for k in scalars if k not in columns]
            rows.append((key, scalars))
        elif _scalar(value):
            flat.append((key, value))
    return columns, rows, flat


def evaluation_dict(evaluation: Evaluation, version_name: str, dataset_name: str) -> dict[str, Any]:
    """The shape of `GET /api/evaluations/<id>`: a version measured on a dataset (or one split of it)."""
    return {
        "id": evaluation.id,
        "status": evaluation.status,
        "model_version": version_name,
        "model_version_id": evaluation.model_version_id,
        "dataset": dataset_name,
        "dataset_id": evaluation.dataset_id,
        "split": evaluation.split,
        "metrics": evaluation.metrics or {},
        "plots": {name: url_for("evaluations.plot", evaluation_id=evaluation.id, name=name)
                  for name in sorted(evaluation.plots or {})},
        "error": evaluation.error,
        "created_at": iso(evaluation.created_at),
        "started_at": iso(evaluation.started_at),
        "finished_at": iso(evaluation.finished_at),
    }


def model_dict(version: ModelVersion) -> dict[str, Any]:
    columns, rows, flat = metric_table(version.metrics or {})
    session = object_session(version)
    measured = evaluations_with_names(session, version.id) if session is not None else []
    return {
        "id": version.id,
        "name": version.name,
        "version": version.name,
        "status": version.status,
        "arch": version.arch,
        "threshold": version.threshold,
        "metrics": version.metrics or {},
        "plots": sorted((version.plots or {}).keys()),
        "selection_metric": version.selection_metric,
        "split_policy": version.split_policy,
        "data_fingerprint": version.data_fingerprint,
        "notes": version.notes,
        "created_at": iso(version.created_at),
        "promoted_at": iso(version.promoted_at),
        "retired_at": iso(version.retired_at),
        # Why the last decision about it was taken: the automatic promotion check's reason, or an admin's action.
        "decision": version.decision,
        "metric_columns": columns,
        "metric_rows": rows,
        "metric_flat": flat,
        # Its external validation: every evaluation of this version on a registered dataset, newest first.
        "evaluations": [evaluation_dict(e, version.name, dataset) for e, _, dataset in measured],
    }
