"""The datasets pages: the list with the register and upload forms, one dataset (its report, thumbnails, split
and gate forms); writes are for admins (web/datasets/service.py checks)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import datasets
from fracture.dataset_files import DatasetZipRefused
from fracture.datasets import DatasetError
from fracture.models import Dataset
from fracture.queue import BrokerUnavailable
from web.context import db, send_stored_png, settings
from web.datasets.schemas import dataset_json
from web.datasets.service import gate, get_dataset, register_folder, revalidate, split, upload_zip

bp = Blueprint("datasets", __name__)


def _back(message: str) -> ResponseReturnValue:
    """Say what went wrong on the dataset's page (or the list) instead of answering with an error page."""
    db().rollback()
    flash(message, "error")
    back = request.view_args.get("dataset_id") if request.view_args else None
    return redirect(url_for("datasets.page", dataset_id=back) if back else url_for("datasets.index"))


@bp.errorhandler(DatasetError)
def _bad_request(exc: DatasetError) -> ResponseReturnValue:
    return _back(str(exc))


@bp.errorhandler(DatasetZipRefused)
def _zip_refused(exc: DatasetZipRefused) -> ResponseReturnValue:
    return _back(f"The zip was refused: {exc}.")


@bp.errorhandler(BrokerUnavailable)
def _not_queued(exc: BrokerUnavailable) -> ResponseReturnValue:
    dataset = exc.subject
    assert isinstance(dataset, Dataset)
    flash(str(exc), "error")
    return redirect(url_for("datasets.page", dataset_id=dataset.id))



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
    dataset = get_dataset(dataset_id)
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
    items = list((get_dataset(dataset_id).thumbnails or {}).values())
    entry = items[class_index][n] if class_index < len(items) and n < len(items[class_index]) else None
    key = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(key, str) or not key.startswith(f"{datasets.files_prefix(dataset_id)}/"):
        abort(404, description="No such thumbnail.")
    return send_stored_png(key, "thumbnail")
