"""The models API's shapes: a model version with its metrics, plots and evaluations; comparisons and rollbacks."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import url_for
from marshmallow import fields as f
from sqlalchemy.orm import object_session

from fracture.evaluations import evaluations_with_names
from fracture.models import ModelStatus, ModelVersion
from web.evaluations.schemas import EvaluationSchema
from web.timefmt import Timestamp


class ModelSchema(ma.Schema):
    """A model version: what it is, how it was selected, its metrics per split, plots and every evaluation."""

    id = f.Integer(required=True)
    name = f.String(required=True)
    version = f.String(required=True, metadata={"description": "The same as name (older clients read it)."})
    status = f.String(required=True, metadata={"enum": [s.value for s in ModelStatus]})
    arch = f.String(allow_none=True)
    threshold = f.Float(allow_none=True)
    metrics = f.Dict(required=True)
    plots = f.List(f.String(), required=True)
    plot_urls = f.Dict(keys=f.String(), values=f.String(), required=True)
    selection_metric = f.Float(allow_none=True)
    split_policy = f.String(allow_none=True)
    data_fingerprint = f.String(allow_none=True)
    notes = f.String(allow_none=True)
    created_at = Timestamp()
    promoted_at = Timestamp()
    retired_at = Timestamp()
    decision = f.String(allow_none=True, metadata={
        "description": "Why the last decision about it was taken: the promotion check's reason or an admin's."})
    robustness = f.Raw(allow_none=True, metadata={
        "description": "Its test split under other departments' acquisition changes, when measured."})
    evaluations = f.List(f.Nested(EvaluationSchema), required=True)

    @ma.pre_dump
    def _flatten(self, version: ModelVersion, **_: Any) -> dict[str, Any]:
        session = object_session(version)
        measured = evaluations_with_names(session, version.id) if session is not None else []
        plots = sorted((version.plots or {}).keys())
        return {
            "id": version.id, "name": version.name, "version": version.name, "status": version.status,
            "arch": version.arch, "threshold": version.threshold, "metrics": version.metrics or {},
            "plots": plots,
            "plot_urls": {name: url_for("models.plot", version_id=version.id, name=name) for name in plots},
            "selection_metric": version.selection_metric, "split_policy": version.split_policy,
            "data_fingerprint": version.data_fingerprint, "notes": version.notes,
            "created_at": version.created_at, "promoted_at": version.promoted_at, "retired_at": version.retired_at,
            "decision": version.decision, "robustness": (version.metrics or {}).get("robustness"),
            "evaluations": list(measured),
        }


def model_json(version: ModelVersion) -> dict[str, Any]:
    out: dict[str, Any] = ModelSchema().dump(version)
    return out


class ModelListSchema(ma.Schema):
    active = f.String(allow_none=True, required=True)
    models = f.List(f.Nested(ModelSchema), required=True)


class RollbackBody(ma.Schema):
    to = f.String(metadata={"description": "Refuse (409) unless the rollback would go to this version."})


class RollbackSchema(ma.Schema):
    active = f.Nested(ModelSchema, required=True)
    replaced = f.Nested(ModelSchema, allow_none=True, required=True)


class CompareQuery(ma.Schema):
    a = f.String(metadata={"description": "Name or id (default: the active version)."})
    b = f.String(metadata={"description": "Name or id (default: the newest other version)."})


class ComparisonSchema(ma.Schema):
    """Two versions side by side: metrics per split, and the latest evaluation per dataset and split."""

    a = f.Dict(required=True)
    b = f.Dict(required=True)
    compared = f.List(f.String(), required=True)
    splits = f.List(f.Dict(), required=True)
    evaluations = f.List(f.Dict(), required=True)


def _scalar(value: object) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


Row = tuple[str, dict[str, Any], dict[str, Any]]


def metric_table(metrics: dict[str, Any]) -> tuple[list[str], list[Row], list[tuple[str, Any]]]:
    """Split metrics into a per-split table (columns; rows of the split, its figures and their 95% intervals where
    the training recorded them) and the remaining top-level scalars (the page's)."""
    columns: list[str] = []
    rows: list[Row] = []
    flat: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if key == "robustness":  # a table of its own
            continue
        if isinstance(value, dict):
            scalars = {k: v for k, v in value.items() if _scalar(v)}
            columns += [k for k in scalars if k not in columns]
            rows.append((key, scalars, value.get("intervals") or {}))
        elif _scalar(value):
            flat.append((key, value))
    return columns, rows, flat


def model_page_row(version: ModelVersion) -> dict[str, Any]:
    """A version as the models page lists it: its JSON and its metrics laid out as a table."""
    columns, rows, flat = metric_table(version.metrics or {})
    return {**model_json(version), "metric_columns": columns, "metric_rows": rows, "metric_flat": flat}
