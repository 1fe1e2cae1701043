"""Datasets: register a server folder or upload a labelled zip, see the validation report, split, gate.

Pages and JSON API share the actions below. Writes are for admins; the validation and the split run in the
trainer's worker, sent by name after the commit.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage

from fracture import dataset_additions, datasets, queue
from fracture.dataset_files import DatasetZipRefused, unpack_dataset_zip
from fracture.datasets import DatasetError
from fracture.models import Dataset, DatasetRole, DatasetStatus
from web.auth import current_user, require_admin
from web.context import celery, db, send_stored_png, settings, storage

bp = Blueprint("datasets", __name__)
QUEUE_DOWN = "The task queue is unavailable, so the dataset was not validated; validate it again when it is back."


class NotQueued(Exception):
    """The dataset was recorded, but its task could not be sent (the broker is down)."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(QUEUE_DOWN)
        self.dataset = dataset


# ---------------------------------------------------------------- actions shared by pages and API


def _send_validation(dataset: Dataset) -> Dataset:
    """Send a committed dataset's validation; if the broker is down, mark it invalid and raise NotQueued."""
    try:
        queue.send_trainer_task(celery(), queue.VALIDATE_DATASET_TASK, dataset.id)
    except queue.BrokerUnavailable:
        datasets.mark_invalid(db(), dataset.id, datasets.BROKER_DOWN)
        db().commit()
        raise NotQueued(dataset) from None
    return dataset


def register_folder(path: str, name: str | None, role: str | None) -> Dataset:
    """Register a server folder under DATASET_ROOTS and send its validation."""
    require_admin("register a dataset")
    if not path.strip():
        raise DatasetError("give the folder's path on the server")
    dataset = datasets.register_folder(db(), settings(), path.strip(), name, role, current_user().id)
    db().commit()
    return _send_validation(dataset)


def upload_zip(part: FileStorage, name: str | None, role: str | None) -> Dataset:
    """Unpack an uploaded dataset zip into storage, register it and send its validation."""
    require_admin("upload a dataset")
    stem = re.sub(r"\.zip$", "", (part.filename or "").rsplit("/", 1)[-1], flags=re.IGNORECASE)
    name = (name or "").strip() or re.sub(r"[^\w .()+-]", "_", stem)[:128] or "uploaded dataset"
    datasets.check_name(db(), name)
    datasets.check_role(role)
    db().rollback()  # no transaction held open while the zip is unpacked
    folder, _layout, _files = unpack_dataset_zip(storage(), settings(), part.stream)
    try:
        dataset = datasets.create_dataset(db(), name, role, datasets.DatasetSource.UPLOAD, folder, current_user().id)
        db().commit()
    except BaseException:
        db().rollback()
        storage().delete_prefix(folder.relative_to(storage().root).as_posix())
        raise
    return _send_validation(dataset)


def split(dataset_id: int, fraction: object, seed: object) -> tuple[Dataset, Dataset]:
    """Record the two parts of a split and send the split to the trainer."""
    require_admin("split a dataset")
    share = datasets.check_fraction(datasets.DEFAULT_FRACTION if fraction in (None, "") else fraction)
    try:
        seed_value = int(seed) if seed not in (None, "") else 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise DatasetError("the seed must be a whole number") from None
    training, evaluation = datasets.create_parts(db(), dataset_id)
    db().commit()
    try:
        queue.send_trainer_task(celery(), queue.SPLIT_DATASET_TASK, dataset_id, training.id, evaluation.id, share,
                                seed_value)
    except queue.BrokerUnavailable:
        for part in (training, evaluation):
            datasets.mark_invalid(db(), part.id, "the task queue was unavailable, so the split was not made")
        db().commit()
        raise NotQueued(training) from None
    return training, evaluation


def gate(dataset_id: int, value: bool) -> Dataset:
    require_admin("change which datasets gate promotion")
    dataset = datasets.set_gate(db(), dataset_id, value)
    db().commit()
    return dataset


def revalidate(dataset_id: int) -> Dataset:
    require_admin("validate a dataset")
    dataset = datasets.restart_validation(db(), dataset_id)
    db().commit()
    return _send_validation(dataset)


def _get(dataset_id: int) -> Dataset:
    dataset = db().get(Dataset, dataset_id)
    if dataset is None:
        abort(404, description=f"There is no dataset with id {dataset_id}.")
    return dataset


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    """The API's form of a dataset, with the URLs of its thumbnails."""
    out = datasets.as_dict(dataset, with_root=current_user().is_admin)
    # Reviewed images added from jobs (trained on with their reviewed labels, besides the dataset's own files).
    out["reviewed_additions"] = dataset_additions.addition_count(db(), dataset.id)
    out["thumbnails"] = {
        label: [url_for("datasets.thumbnail", dataset_id=dataset.id, class_index=c, n=n) for n in range(len(items))]
        for c, (label, items) in enumerate((dataset.thumbnails or {}).items())
    }
    return out


@bp.app_template_global()
def ready_training_datasets() -> int:
    """How many training datasets are ready (the training page says so when there is none)."""
    query = select(func.count(Dataset.id)).where(
        Dataset.status == DatasetStatus.READY, Dataset.role == DatasetRole.TRAINING
    )
    return int(db().scalar(query) or 0)


# ---------------------------------------------------------------- API


@bp.errorhandler(DatasetError)
def _bad_request(exc: DatasetError) -> ResponseReturnValue:
    return _refused(str(exc), 409 if "already exists" in str(exc) else 400)


@bp.errorhandler(DatasetZipRefused)
def _zip_refused(exc: DatasetZipRefused) -> ResponseReturnValue:
    return _refused(f"The zip was refused: {exc}.", exc.status)


@bp.errorhandler(NotQueued)
def _not_queued(exc: NotQueued) -> ResponseReturnValue:
    if request.path.startswith("/api/"):
        db().refresh(exc.dataset)
        return jsonify({**dataset_json(exc.dataset), "error": str(exc)}), 503
    flash(str(exc), "error")
    return redirect(url_for("datasets.page", dataset_id=exc.dataset.id))


def _refused(message: str, status: int) -> ResponseReturnValue:
    db().rollback()
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), status
    flash(message, "error")
    back = request.view_args.get("dataset_id") if request.view_args else None
    return redirect(url_for("datasets.page", dataset_id=back) if back else url_for("datasets.index"))


@bp.post("/api/datasets")
def api_create() -> tuple[Response, int]:
    """A server folder ({"path", "name"?, "role"?} as JSON) or a multipart zip ("file", with "name", "role")."""
    part = request.files.get("file")
    if part is not None:
        dataset = upload_zip(part, request.form.get("name"), request.form.get("role"))
    else:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise DatasetError('send {"path": "...", "name"?, "role"?} as JSON, or a zip as the multipart part "file"')
        dataset = register_folder(body["path"], body.get("name"), body.get("role"))
    return jsonify(dataset_json(dataset)), 201


@bp.get("/api/datasets")
def api_list() -> Response:
    rows = db().scalars(select(Dataset).order_by(Dataset.id)).all()
    return jsonify({"datasets": [dataset_json(d) for d in rows]})


@bp.get("/api/datasets/<int:dataset_id>")
def api_get(dataset_id: int) -> Response:
    return jsonify(dataset_json(_get(dataset_id)))


@bp.post("/api/datasets/<int:dataset_id>/split")
def api_split(dataset_id: int) -> tuple[Response, int]:
    """{"fraction"?: 0.2, "seed"?: 0} -> the two parts, validating."""
    body = request.get_json(silent=True) or {}
    training, evaluation = split(dataset_id, body.get("fraction"), body.get("seed"))
    return jsonify({"training": dataset_json(training), "evaluation": dataset_json(evaluation)}), 202


@bp.post("/api/datasets/<int:dataset_id>/gate")
def api_gate(dataset_id: int) -> Response:
    body = request.get_json(silent=True) or {}
    if not isinstance(body.get("gate"), bool):
        raise DatasetError('send {"gate": true} or {"gate": false}')
    return jsonify(dataset_json(gate(dataset_id, body["gate"])))


@bp.post("/api/datasets/<int:dataset_id>/validate")
def api_validate(dataset_id: int) -> tuple[Response, int]:
    return jsonify(dataset_json(revalidate(dataset_id))), 202


# ---------------------------------------------------------------- pages


@bp.get("/datasets")
def index() -> ResponseReturnValue:
    rows = db().scalars(select(Dataset).order_by(Dataset.id)).all()
    return render_template("datasets.html", datasets=rows, total_files=datasets.total_files,
                           roots=settings().dataset_roots)


@bp.post("/datasets")
def register_page() -> ResponseReturnValue:
    form = request.form
    dataset = register_folder(form.get("path", ""), form.get("name") or None, form.get("role"))
    flash(f"Dataset '{dataset.name}' registered; it is being validated.", "ok")
    return redirect(url_for("datasets.page", dataset_id=dataset.id))


@bp.post("/datasets/upload")
def upload_page() -> ResponseReturnValue:
    part = request.files.get("file")
    if part is None or not part.filename:
        raise DatasetError("choose a zip file to upload")
    dataset = upload_zip(part, request.form.get("name"), request.form.get("role"))
    flash(f"Dataset '{dataset.name}' uploaded; it is being validated.", "ok")
    return redirect(url_for("datasets.page", dataset_id=dataset.id))


@bp.get("/datasets/<int:dataset_id>")
def page(dataset_id: int) -> ResponseReturnValue:
    dataset = _get(dataset_id)
    parts = db().scalars(select(Dataset).where(Dataset.parent_id == dataset.id).order_by(Dataset.id)).all()
    parent = db().get(Dataset, dataset.parent_id) if dataset.parent_id else None
    return render_template("dataset.html", d=dataset, info=dataset_json(dataset), parts=parts, parent=parent,
                           default_fraction=datasets.DEFAULT_FRACTION)


@bp.post("/datasets/<int:dataset_id>/split")
def split_page(dataset_id: int) -> ResponseReturnValue:
    training, evaluation = split(dataset_id, request.form.get("fraction"), request.form.get("seed"))
    flash(f"Splitting into '{training.name}' and '{evaluation.name}'; both are validated next.", "ok")
    return redirect(url_for("datasets.page", dataset_id=dataset_id))


@bp.post("/datasets/<int:dataset_id>/gate")
def gate_page(dataset_id: int) -> ResponseReturnValue:
    dataset = gate(dataset_id, request.form.get("gate") == "on")
    flash(f"'{dataset.name}' {'now gates' if dataset.gate else 'no longer gates'} automatic promotion.", "ok")
    return redirect(url_for("datasets.page", dataset_id=dataset_id))


@bp.post("/datasets/<int:dataset_id>/validate")
def validate_page(dataset_id: int) -> ResponseReturnValue:
    dataset = revalidate(dataset_id)
    flash(f"'{dataset.name}' is being validated again.", "ok")
    return redirect(url_for("datasets.page", dataset_id=dataset_id))


@bp.get("/datasets/<int:dataset_id>/thumbnails/<int:class_index>/<int:n>")
def thumbnail(dataset_id: int, class_index: int, n: int) -> ResponseReturnValue:
    """Serve a thumbnail by the storage key recorded on the dataset row, never a path taken from the URL."""
    items = list((_get(dataset_id).thumbnails or {}).values())
    entry = items[class_index][n] if class_index < len(items) and n < len(items[class_index]) else None
    key = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(key, str) or not key.startswith(f"{datasets.files_prefix(dataset_id)}/"):
        abort(404, description="No such thumbnail.")
    return send_stored_png(key, "thumbnail")
