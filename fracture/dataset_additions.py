"""Reviewed images added to a training dataset: the only code that writes DatasetAddition rows.

An admin adds a job's reviewed images, with their reviewed labels, to a READY training dataset. Each file is
copied into storage under the dataset's folder (datasets/<id>/additions/<md5>), so the addition outlives the
job. An image is skipped when the dataset already holds its bytes (its own files, by the MD5s its validation
kept, or an earlier addition), and kept out when a locked evaluation dataset holds it: the same bytes, or a
near duplicate (a rotated, flipped or resized copy, by the perceptual hashes that dataset's validation kept).
The trainer reads the additions with the dataset (trainer.run_files) and trains on them, never validates on them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fracture import datasets
from fracture.datasets import DatasetError
from fracture.models import MAX_ROW_ID, Dataset, DatasetAddition, DatasetRole, DatasetStatus, Image, Job, Result, Review
from fracture.storage import Storage, StorageError

NEAR_SIZE = 64  # the size validation decodes at before hashing (trainer.audit.decode_for_audit)


@dataclass
class AdditionReport:
    """What adding a job's reviewed images to a dataset did, image by image."""

    dataset_id: int
    dataset: str
    added: list[dict[str, Any]] = field(default_factory=list)
    already: list[dict[str, Any]] = field(default_factory=list)  # the dataset holds the same bytes
    locked: list[dict[str, Any]] = field(default_factory=list)  # a locked evaluation dataset holds it
    skipped: list[dict[str, Any]] = field(default_factory=list)  # no file, unreadable, not a class of the dataset
    not_reviewed: int = 0

    def as_dict(self) -> dict[str, Any]:
        counts = {k: len(getattr(self, k)) for k in ("added", "already", "locked", "skipped")}
        return {"dataset_id": self.dataset_id, "dataset": self.dataset,
                "counts": {**counts, "not_reviewed": self.not_reviewed}, "added": self.added,
                "already_in_dataset": self.already, "kept_out_locked": self.locked, "skipped": self.skipped}

    def sentence(self) -> str:
        """One line for the page's flash message."""
        parts = [f"{len(self.added)} reviewed image{'' if len(self.added) == 1 else 's'} added to '{self.dataset}'"]
        if self.already:
            parts.append(f"{len(self.already)} already in it")
        for name in sorted({x["evaluation_dataset"] for x in self.locked}):
            n = sum(1 for x in self.locked if x["evaluation_dataset"] == name)
            them = "it" if n == 1 else "them"
            parts.append(f"{n} kept out because the locked evaluation dataset '{name}' holds {them}")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped ({'; '.join(sorted({x['reason'] for x in self.skipped}))})")
        if self.not_reviewed:
            parts.append(f"{self.not_reviewed} not reviewed")
        return "; ".join(parts) + "."


def target_dataset(session: Session, dataset_id: object) -> Dataset:
    """The dataset reviewed images may go to: a READY training dataset; DatasetError otherwise."""
    if not isinstance(dataset_id, int) or isinstance(dataset_id, bool):
        raise DatasetError("name the training dataset to add to (dataset_id: a whole number)")
    if not 0 < dataset_id <= MAX_ROW_ID:
        raise DatasetError(f"there is no dataset with id {dataset_id}")
    dataset = datasets.get_dataset(session, dataset_id)
    if dataset.role != DatasetRole.TRAINING:
        raise DatasetError(f"dataset {dataset.name!r} is a locked evaluation dataset: nothing is ever added to it")
    if dataset.status != DatasetStatus.READY:
        raise DatasetError(f"dataset {dataset.name!r} is not ready ({dataset.status}): validate it first")
    return dataset


def addition_key(dataset_id: int, md5: str) -> str:
    """Where the copy of an added image is kept."""
    return f"{datasets.files_prefix(dataset_id)}/additions/{md5}"


def _hashes(storage: Storage, dataset_id: int) -> dict[str, list[str]]:
    key = datasets.hashes_key(dataset_id)
    if not storage.exists(key):
        return {}
    data = json.loads(storage.read_bytes(key))
    return data if isinstance(data, dict) else {}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _reviewed(session: Session, job: Job) -> Iterator[tuple[Image, Review]]:
    stmt = select(Image, Review).join(Review, Review.image_id == Image.id).where(Image.job_id == job.id)
    yield from session.execute(stmt.order_by(Image.seq))


def add_reviewed(session: Session, storage: Storage, job: Job, dataset_id: object,
                 added_by: int | None) -> AdditionReport:
    """Add `job`'s reviewed images, with their reviewed labels, to a ready training dataset (flushed, not committed).

    DatasetError when the dataset cannot receive them.
    """
    from fracture.decode import ImageError, decode
    from fracture.image_hashes import dihedral_hashes, near_any  # imagehash, scipy: only when adding

    dataset = target_dataset(session, dataset_id)
    report = AdditionReport(dataset.id, dataset.name)
    classes = {label for per_class in (dataset.counts or {}).values() for label in per_class}
    held = set(_hashes(storage, dataset.id))
    held |= set(session.scalars(select(DatasetAddition.md5).where(DatasetAddition.dataset_id == dataset.id)))
    locked = [(d.name, _hashes(storage, d.id)) for d in session.scalars(
        select(Dataset).where(Dataset.role == DatasetRole.EVALUATION, Dataset.status == DatasetStatus.READY)
        .order_by(Dataset.id))]
    reviewed = 0
    for image, review in _reviewed(session, job):
        reviewed += 1
        row: dict[str, Any] = {"image_id": image.id, "path": image.path, "label": review.label}
        if classes and review.label not in classes:
            report.skipped.append({**row, "reason": f"the dataset has no class {review.label!r}"})
            continue
        try:
            data = storage.read_bytes(image.storage_key) if image.storage_key else None
        except (OSError, StorageError):
            data = None
        if data is None:
            report.skipped.append({**row, "reason": "its file is not in storage"})
            continue
        md5 = _md5(data)
        if md5 in held:
            report.already.append(row)
            continue
        holder = next((name for name, hashes in locked if md5 in hashes), None)
        if holder is None and any(hashes for _, hashes in locked):
            try:
                views = dihedral_hashes(decode(data, NEAR_SIZE))
            except ImageError:
                report.skipped.append({**row, "reason": "it cannot be decoded as an image"})
                continue
            holder = next((name for name, hashes in locked if near_any(views, hashes)), None)
        if holder is not None:
            report.locked.append({**row, "evaluation_dataset": holder})
            continue
        key = addition_key(dataset.id, md5)
        storage.write_bytes(key, data)
        try:
            with session.begin_nested():  # another admin adding the same image at once: one row, unique by MD5
                session.add(DatasetAddition(
                    dataset_id=dataset.id, storage_key=key, md5=md5, label=review.label, source_job_id=job.id,
                    source_image_id=image.id, source_path=image.path, added_by=added_by))
        except IntegrityError:
            report.already.append(row)
            continue
        held.add(md5)
        report.added.append(row)
    report.not_reviewed = max(job.total - reviewed, 0)
    return report


def additions_of(session: Session, dataset_id: int) -> list[DatasetAddition]:
    """A dataset's additions, oldest first."""
    return list(session.scalars(select(DatasetAddition).where(DatasetAddition.dataset_id == dataset_id)
                                .order_by(DatasetAddition.id)))


def addition_count(session: Session, dataset_id: int) -> int:
    """How many reviewed images were added to a dataset."""
    return int(session.scalar(select(func.count(DatasetAddition.id))
                              .where(DatasetAddition.dataset_id == dataset_id)) or 0)


def spec_of(session: Session, storage: Storage, dataset_id: int) -> list[dict[str, Any]]:
    """A dataset's additions as the trainer's data spec lists them: file, label, MD5, and whether the reviewed
    label differs from the model's prediction (None once the job and its results are gone)."""
    stmt = (
        select(DatasetAddition, Result.prediction)
        .outerjoin(Job, Job.id == DatasetAddition.source_job_id)
        .outerjoin(Result, (Result.image_id == DatasetAddition.source_image_id)
                   & (Result.model_version_id == Job.model_version_id))
        .where(DatasetAddition.dataset_id == dataset_id)
        .order_by(DatasetAddition.id)
    )
    return [{"file": str(storage.path(a.storage_key)), "label": a.label, "md5": a.md5,
             "relabelled": None if prediction is None else a.label != prediction}
            for a, prediction in session.execute(stmt)]
