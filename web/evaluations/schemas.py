"""The evaluations API's shapes: a model version measured on a registered dataset (or one split of it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import marshmallow as ma
from flask import url_for
from marshmallow import fields as f

from fracture.evaluations import SPLIT_CHOICES
from fracture.models import Evaluation
from web.openapi import one_of, row_id
from web.timefmt import Lifetime


class EvaluationSchema(Lifetime):
    """Dumps (evaluation, model version name, dataset name)."""

    id = f.Integer(required=True)
    status = f.String(required=True)
    model_version = f.String(required=True)
    model_version_id = f.Integer(required=True)
    dataset = f.String(required=True)
    dataset_id = f.Integer(required=True)
    split = f.String(allow_none=True)
    audit = f.Boolean(required=True)
    metrics = f.Dict(required=True, metadata={
        "description": "Figures by name (roc_auc, sensitivity, ...; intervals: the 95% interval [low, high] of "
                       "roc_auc, sensitivity and specificity)."})
    plots = f.Dict(keys=f.String(), values=f.String(), required=True, metadata={"description": "Plot URLs."})
    error = f.String(allow_none=True)

    @ma.pre_dump
    def _flatten(self, named: Sequence[Any], **_: Any) -> dict[str, Any]:
        evaluation, version_name, dataset_name = named
        return {
            "id": evaluation.id, "status": evaluation.status, "model_version": version_name,
            "model_version_id": evaluation.model_version_id, "dataset": dataset_name,
            "dataset_id": evaluation.dataset_id, "split": evaluation.split, "audit": bool(evaluation.audit),
            "metrics": evaluation.metrics or {},
            "plots": {name: url_for("evaluations.plot", evaluation_id=evaluation.id, name=name)
                      for name in sorted(evaluation.plots or {})},
            "error": evaluation.error, "created_at": evaluation.created_at, "started_at": evaluation.started_at,
            "finished_at": evaluation.finished_at,
        }


def evaluation_json(evaluation: Evaluation, version_name: str, dataset_name: str) -> dict[str, Any]:
    out: dict[str, Any] = EvaluationSchema().dump((evaluation, version_name, dataset_name))
    return out


class EvaluationListSchema(ma.Schema):
    evaluations = f.List(f.Nested(EvaluationSchema), required=True)


class EvaluationListQuery(ma.Schema):
    model_version = f.String(metadata={"description": "Only this version's (name or id)."})


class EvaluationBody(ma.Schema):
    model_version = f.Raw(required=True, metadata={
        "description": "A model version's name (release-1) or id.", "oneOf": [{"type": "string"}, {"type": "integer"}]})
    dataset_id = row_id(required=True, metadata={"description": "A registered, validated dataset."})
    split = f.String(allow_none=True, validate=one_of(
        [*SPLIT_CHOICES, ""], error=f"must be {', '.join(SPLIT_CHOICES)} (or left out for the whole dataset)"),
        metadata={"description": "One split, or left out for the whole dataset."})
    audit = f.Boolean(load_default=False, error_messages={
        "invalid": "must be true or false (true also runs the robustness audit)"},
        metadata={"description": "Also run the robustness audit."})


class EvaluationStartedSchema(ma.Schema):
    """A queued evaluation (or, with `error`, one failed because the broker was down)."""

    id = f.Integer(required=True)
    status = f.String(required=True)


class EvaluationNotSentSchema(EvaluationStartedSchema):
    """Recorded, then failed: the broker was down."""

    error = f.String(required=True)
