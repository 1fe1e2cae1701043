"""The datasets API: register a server folder or upload a labelled zip (admins), read the report, split, gate."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture.dataset_files import DatasetZipRefused
from fracture.datasets import DatasetError
from fracture.models import Dataset
from fracture.queue import BrokerUnavailable
from web.context import db
from web.datasets import schemas as s
from web.datasets.service import gate, get_dataset, register_folder, revalidate, split, upload_zip
from web.openapi import ApiBlueprint, not_sent

bp = ApiBlueprint("datasets_api", __name__, url_prefix="/api",
                  description="Datasets to train on or evaluate on (evaluation datasets are locked).")


@bp.errorhandler(DatasetError)
def _bad_request(exc: DatasetError) -> ResponseReturnValue:
    db().rollback()
    return {"error": str(exc)}, 409 if "already exists" in str(exc) else 400


@bp.errorhandler(DatasetZipRefused)
def _zip_refused(exc: DatasetZipRefused) -> ResponseReturnValue:
    db().rollback()
    return {"error": f"The zip was refused: {exc}."}, exc.status


@bp.errorhandler(BrokerUnavailable)
def _not_queued(exc: BrokerUnavailable) -> ResponseReturnValue:
    dataset = exc.subject
    assert isinstance(dataset, Dataset)
    db().refresh(dataset)
    return not_sent(exc, s.dataset_json(dataset))


@bp.post("/datasets")
@bp.doc(requestBody={"required": True, "content": {"application/json": {"schema": s.FolderBody},
                                                    "multipart/form-data": {"schema": s.ZipForm}}})
@bp.response(201, s.DatasetSchema)
@bp.alt_response(503, schema=s.DatasetNotSentSchema, description="Recorded, but its validation was not sent.")
def api_create() -> tuple[Dataset, int]:
    """Register a server folder (JSON) or upload a zip (multipart part `file`); it is validated next (admins)."""
    part = request.files.get("file")
    if part is not None:
        form = s.ZipForm().load({**request.form.to_dict(), "file": part})
        return upload_zip(part, form.get("name"), form.get("role")), 201
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise DatasetError('send {"path": "...", "name"?, "role"?} as JSON, or a zip as the multipart part "file"')
    folder = s.FolderBody().load(body)
    return register_folder(folder["path"], folder.get("name"), folder.get("role")), 201


@bp.get("/datasets")
@bp.response(200, s.DatasetListSchema)
def api_list() -> dict[str, Any]:
    """Every dataset."""
    return {"datasets": db().scalars(select(Dataset).order_by(Dataset.id)).all()}


@bp.get("/datasets/<int:dataset_id>")
@bp.response(200, s.DatasetSchema)
def api_get(dataset_id: int) -> Dataset:
    """One dataset with its validation report."""
    return get_dataset(dataset_id)


@bp.post("/datasets/<int:dataset_id>/split")
@bp.arguments(s.SplitBody, required=False)
@bp.response(202, s.SplitSchema)
def api_split(body: dict[str, Any], dataset_id: int) -> tuple[dict[str, Any], int]:
    """Split into a training and a locked evaluation part by groups (no near-duplicate across); both validate."""
    training, evaluation = split(dataset_id, (body or {}).get("fraction"), (body or {}).get("seed"))
    return {"training": training, "evaluation": evaluation}, 202


@bp.post("/datasets/<int:dataset_id>/gate")
@bp.arguments(s.GateBody)
@bp.response(200, s.DatasetSchema)
def api_gate(body: dict[str, Any], dataset_id: int) -> Dataset:
    """Whether this evaluation dataset gates automatic promotion (admins)."""
    return gate(dataset_id, body["gate"])


@bp.post("/datasets/<int:dataset_id>/validate")
@bp.response(202, s.DatasetSchema)
def api_validate(dataset_id: int) -> tuple[Dataset, int]:
    """Validate the dataset again (admins)."""
    return revalidate(dataset_id), 202
