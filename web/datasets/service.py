"""What the datasets pages and API share: register a folder, upload a zip, split, gate, validate again.

Pages and JSON API share these actions. Writes are for admins; the validation and the split run in the
trainer's worker, sent by name after the commit.
"""

from __future__ import annotations

import re

from flask import abort
from werkzeug.datastructures import FileStorage

from fracture import datasets, queue
from fracture.dataset_files import unpack_dataset_zip
from fracture.datasets import DatasetError
from fracture.models import Dataset
from web.auth import current_user, require_admin
from web.context import celery, db, settings, storage

QUEUE_DOWN = "The task queue is unavailable, so the dataset was not validated; validate it again when it is back."


# ---------------------------------------------------------------- actions shared by pages and API


def _send_validation(dataset: Dataset) -> Dataset:
    """Send a committed dataset's validation; if the broker is down, mark it invalid and raise BrokerUnavailable
    (its subject: the dataset)."""
    queue.send_or_mark(lambda: queue.send_trainer_task(celery(), queue.VALIDATE_DATASET_TASK, dataset.id),
                       lambda: _mark_invalid([dataset], datasets.BROKER_DOWN), dataset, QUEUE_DOWN)
    return dataset


def _mark_invalid(rows: list[Dataset], reason: str) -> None:
    for row in rows:
        datasets.mark_invalid(db(), row.id, reason)
    db().commit()


def register_folder(path: str, name: str | None, role: str | None) -> Dataset:
    """Register a server folder under DATASET_ROOTS and send its validation."""
    require_admin("register a dataset")
    if not path.strip():
        raise DatasetError("give the folder's path on the server")
    user = current_user()
    dataset = datasets.register_folder(db(), settings(), path.strip(), name, role, user.id, actor=user.username)
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
        user = current_user()
        dataset = datasets.create_dataset(db(), name, role, datasets.DatasetSource.UPLOAD, folder, user.id,
                                          actor=user.username)
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
    queue.send_or_mark(
        lambda: queue.send_trainer_task(celery(), queue.SPLIT_DATASET_TASK, dataset_id, training.id, evaluation.id,
                                        share, seed_value),
        lambda: _mark_invalid([training, evaluation], "the task queue was unavailable, so the split was not made"),
        training, QUEUE_DOWN)
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


def get_dataset(dataset_id: int) -> Dataset:
    dataset = db().get(Dataset, dataset_id)
    if dataset is None:
        abort(404, description=f"There is no dataset with id {dataset_id}.")
    return dataset
