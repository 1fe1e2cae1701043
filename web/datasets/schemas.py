"""The datasets API's shapes: a dataset (its validation report, counts, split, thumbnails) and the requests."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import url_for
from marshmallow import fields as f

from fracture import dataset_additions, datasets
from fracture.models import Dataset, DatasetRole, DatasetStatus
from web.auth import current_user
from web.context import db
from web.openapi import one_of

ROLES = [r.value for r in DatasetRole]


class DatasetSchema(ma.Schema):
    id = f.Integer(required=True)
    name = f.String(required=True)
    role = f.String(required=True, validate=one_of(ROLES))
    status = f.String(required=True, metadata={"enum": [s.value for s in DatasetStatus]})
    source = f.String(allow_none=True)
    parent_id = f.Integer(allow_none=True)
    gate = f.Boolean(allow_none=True, metadata={"description": "Its evaluations gate automatic promotion."})
    layout = f.String(allow_none=True)
    counts = f.Dict(required=True)
    audit = f.Dict(required=True, metadata={"description": "The validation report."})
    error = f.String(allow_none=True)
    fingerprint = f.String(allow_none=True)
    created_at = f.String(allow_none=True, metadata={"format": "date-time"})
    validated_at = f.String(allow_none=True, metadata={"format": "date-time"})
    split = f.Dict(metadata={"description": "How a split dataset was made."})
    root = f.String(metadata={"description": "The server folder (admins only)."})
    reviewed_additions = f.Integer(required=True, metadata={
        "description": "Reviewed images added from jobs (trained on with their reviewed labels)."})
    thumbnails = f.Dict(keys=f.String(), values=f.List(f.String()), required=True)

    @ma.pre_dump
    def _flatten(self, dataset: Dataset, **_: Any) -> dict[str, Any]:
        out = datasets.as_dict(dataset, with_root=current_user().is_admin)
        out["reviewed_additions"] = dataset_additions.addition_count(db(), dataset.id)
        out["thumbnails"] = {
            label: [url_for("datasets.thumbnail", dataset_id=dataset.id, class_index=c, n=n)
                    for n in range(len(items))]
            for c, (label, items) in enumerate((dataset.thumbnails or {}).items())
        }
        return out


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = DatasetSchema().dump(dataset)
    return out


class DatasetListSchema(ma.Schema):
    datasets = f.List(f.Nested(DatasetSchema), required=True)


class FolderBody(ma.Schema):
    path = f.String(required=True, metadata={"description": "A folder under one of DATASET_ROOTS."})
    name = f.String(allow_none=True)
    role = f.String(allow_none=True, validate=one_of(ROLES))


class ZipForm(ma.Schema):
    file = f.Raw(required=True, metadata={"type": "string", "format": "binary",
                                          "description": "A zip with one folder per class."})
    name = f.String()
    role = f.String(validate=one_of(ROLES))


class SplitBody(ma.Schema):
    fraction = f.Raw(metadata={"description": f"The evaluation part's share (default {datasets.DEFAULT_FRACTION})."})
    seed = f.Raw(metadata={"description": "The grouped split's seed (default 0)."})


class SplitSchema(ma.Schema):
    training = f.Nested(DatasetSchema, required=True)
    evaluation = f.Nested(DatasetSchema, required=True)


class GateBody(ma.Schema):
    gate = f.Boolean(required=True, truthy={True}, falsy={False})


class DatasetNotSentSchema(DatasetSchema):
    error = f.String(required=True)
