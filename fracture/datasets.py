"""The state of registered datasets: the only code that creates datasets and records their validation.

A dataset is a folder the system reads (never writes): a server folder under settings.dataset_roots, the
storage folder an uploaded zip was unpacked into, or a part split off another dataset (its parent's folder
limited to `members`). Validation (layout, counts, audit) runs in the trainer's worker and lands here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fracture import audit_log, heartbeats
from fracture.config import Settings
from fracture.models import Dataset, DatasetRole, DatasetStatus

_NAME = re.compile(r"^[\w .()+-]{1,128}$")
BROKER_DOWN = "the task queue was unavailable, so the dataset was not validated; validate it again"
TRAINING_PART, EVALUATION_PART = "training part", "evaluation part"
DEFAULT_FRACTION = 0.2


class DatasetSource(StrEnum):
    """Where a dataset's files come from."""

    FOLDER = "folder"  # a server folder under DATASET_ROOTS (or FRACTURE_DATASET, the operator's own)
    UPLOAD = "upload"  # a zip unpacked into storage
    SPLIT = "split"  # a part of its parent's folder


def files_prefix(dataset_id: int) -> str:
    """The storage prefix of what validation writes for a dataset (hashes, thumbnails)."""
    return f"datasets/{dataset_id}"


def hashes_key(dataset_id: int) -> str:
    """Where a dataset's MD5s and perceptual hashes are kept, so later validations can compare with them."""
    return f"{files_prefix(dataset_id)}/hashes.json"


class DatasetError(ValueError):
    """A dataset cannot be registered as asked; the message says why, for the page or the API."""


def allowed_folder(settings: Settings, path: str | Path) -> Path:
    """`path` resolved, if it is an existing folder under one of settings.dataset_roots; else DatasetError."""
    roots = settings.dataset_roots
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetError(f"no such folder on the server: {path}") from None
    if not any(resolved == root or root in resolved.parents for root in roots):
        shown = ", ".join(str(r) for r in roots) or "(none configured)"
        raise DatasetError(f"{path} is not under an allowed dataset root ({shown}); set DATASET_ROOTS to allow it")
    if not resolved.is_dir():
        raise DatasetError(f"not a folder: {path}")
    return resolved


def check_name(session: Session, name: str) -> str:
    """A free, displayable dataset name; DatasetError otherwise."""
    name = name.strip()
    if not _NAME.match(name):
        raise DatasetError("a dataset name has 1-128 letters, digits, spaces and . _ - + ( )")
    if session.scalars(select(Dataset.id).where(Dataset.name == name)).first() is not None:
        raise DatasetError(f"a dataset named {name!r} already exists")
    return name


def check_role(role: str | None) -> DatasetRole:
    """The role asked for (training by default); DatasetError for any other word."""
    try:
        return DatasetRole(role or DatasetRole.TRAINING)
    except ValueError:
        raise DatasetError(f"role must be one of {', '.join(r.value for r in DatasetRole)}") from None


def create_dataset(
    session: Session, name: str, role: str | None, source: str, root: Path, created_by: int | None = None,
    parent_id: int | None = None, members: list[str] | None = None, actor: str | None = None,
) -> Dataset:
    """Add a dataset to be validated (flushed, not committed: the caller commits, then sends the validation).

    With `actor` (who asked: a username, or "cli"), the registration is recorded in the audit log."""
    dataset = Dataset(
        name=check_name(session, name), role=check_role(role), status=DatasetStatus.VALIDATING, source=source,
        root=str(root), parent_id=parent_id, members={"paths": sorted(members)} if members is not None else {},
        created_by=created_by,
    )
    session.add(dataset)
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "dataset.register", dataset.name,
                         {"id": dataset.id, "role": str(dataset.role), "source": str(source), "root": str(root)})
    return dataset


def member_paths(dataset: Dataset) -> set[str] | None:
    """The relative paths a split-off part is limited to, or None for the whole folder."""
    paths = (dataset.members or {}).get("paths")
    return set(paths) if isinstance(paths, list) else None


def record_validation(
    session: Session, dataset_id: int, layout: str, counts: dict[str, Any], report: dict[str, Any],
    thumbnails: dict[str, Any], fingerprint: str,
) -> None:
    """Mark a dataset ready with what its validation found."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        return
    dataset.status, dataset.error, dataset.validated_at = DatasetStatus.READY, None, datetime.now(UTC)
    dataset.layout, dataset.counts, dataset.report = layout, counts, report
    dataset.thumbnails, dataset.fingerprint = thumbnails, fingerprint


def mark_invalid(session: Session, dataset_id: int, reason: str, now: datetime | None = None) -> None:
    """Mark a dataset unusable, with one readable sentence saying why."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is not None:
        dataset.status, dataset.error, dataset.validated_at = DatasetStatus.INVALID, reason, now or datetime.now(UTC)


def start_validation(session: Session, dataset_id: int) -> Dataset | None:
    """Note that a trainer took the dataset's validation (its first heartbeat); None when it is not `validating`
    (deleted, or already ended: a redelivered task, or one the reaper failed, does nothing)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.status != DatasetStatus.VALIDATING:
        return None
    dataset.heartbeat_at = datetime.now(UTC)
    return dataset


def beat_validation(session: Session, dataset_id: int, now: datetime | None = None) -> None:
    """Record that the trainer validating `dataset_id` (or splitting it off its parent) is alive."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.VALIDATING)
                    .values(heartbeat_at=now or datetime.now(UTC)))


def fail_dead_validations(session: Session, now: datetime, heartbeat_stale_s: int) -> list[int]:
    """Mark invalid the datasets a trainer started validating and stopped beating for; return their ids.

    A dataset still waiting in the queue has no heartbeat and is left alone."""
    failed = []
    rows = session.scalars(select(Dataset).where(Dataset.status == DatasetStatus.VALIDATING,
                                                 Dataset.heartbeat_at.is_not(None)))
    for dataset in rows:
        reason = heartbeats.stopped_worker(dataset.heartbeat_at, now, heartbeat_stale_s)
        if reason is not None:
            mark_invalid(session, dataset.id, f"The dataset could not be validated: {reason}; validate it again.", now)
            failed.append(dataset.id)
    return failed


def set_gate(session: Session, dataset_id: int, gate: bool) -> Dataset:
    """Make an evaluation dataset gate automatic promotion (or stop it); training datasets never gate."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetError(f"no dataset with id {dataset_id}")
    if gate and dataset.role != DatasetRole.EVALUATION:
        raise DatasetError("only an evaluation (locked) dataset can gate promotion")
    dataset.gate = gate
    return dataset


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    """The dataset `dataset_id`; DatasetError if there is none."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetError(f"no dataset with id {dataset_id}")
    return dataset


def register_folder(
    session: Session, settings: Settings, path: str | Path, name: str | None = None, role: str | None = None,
    created_by: int | None = None, trusted: bool = False, actor: str | None = None,
) -> Dataset:
    """Add a server folder (under DATASET_ROOTS unless `trusted`: the operator's FRACTURE_DATASET) to be validated."""
    if trusted:
        root = Path(path).resolve()
        if not root.is_dir():
            raise DatasetError(f"no such folder on the server: {path}")
    else:
        root = allowed_folder(settings, path)
    return create_dataset(session, name or root.name, role, DatasetSource.FOLDER, root, created_by, actor=actor)


def dataset_with_root(session: Session, root: Path) -> Dataset | None:
    """The whole-folder dataset registered for `root`, if any (split-off parts are not counted)."""
    return session.scalars(
        select(Dataset).where(Dataset.root == str(root.resolve()), Dataset.parent_id.is_(None)).limit(1)
    ).first()


def move_roots(session: Session, old: Path, new: Path) -> list[Dataset]:
    """Point the datasets whose folder lies under `old` at the same folder under `new` (storage restored into
    another STORAGE_DIR: the uploads unpacked there moved with it); return them."""
    moved = []
    for dataset in session.scalars(select(Dataset).order_by(Dataset.id)):
        root = Path(dataset.root)
        if root == old or old in root.parents:
            dataset.root = str(new / root.relative_to(old))
            moved.append(dataset)
    session.flush()
    return moved


def other_ready(session: Session, dataset: Dataset) -> list[Dataset]:
    """The ready datasets to compare `dataset` with: all but itself, its ancestors and its descendants."""
    related = {dataset.id}
    parent_id = dataset.parent_id
    while parent_id is not None and parent_id not in related:  # its ancestors
        related.add(parent_id)
        parent = session.get(Dataset, parent_id)
        parent_id = parent.parent_id if parent else None
    rows = session.scalars(select(Dataset).where(Dataset.status == DatasetStatus.READY).order_by(Dataset.id)).all()
    children: dict[int, list[int]] = {}
    for row in session.scalars(select(Dataset).where(Dataset.parent_id.is_not(None))):
        children.setdefault(row.parent_id or 0, []).append(row.id)
    todo = [dataset.id]
    while todo:  # its descendants
        for child in children.get(todo.pop(), []):
            if child not in related:
                related.add(child)
                todo.append(child)
    return [row for row in rows if row.id not in related]


def restart_validation(session: Session, dataset_id: int) -> Dataset:
    """Put a dataset back to `validating` before its validation is sent again."""
    dataset = get_dataset(session, dataset_id)
    dataset.status, dataset.error, dataset.heartbeat_at = DatasetStatus.VALIDATING, None, None  # queued again
    return dataset


def check_fraction(fraction: object) -> float:
    """The share of a split that goes to the evaluation part: a number from 0.05 to 0.5; DatasetError otherwise."""
    try:
        value = float(fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = -1.0
    if not 0.05 <= value <= 0.5:
        raise DatasetError("the evaluation fraction must be a number from 0.05 to 0.5")
    return value


def create_parts(session: Session, parent_id: int) -> tuple[Dataset, Dataset]:
    """Add the two empty parts of a split (training, locked evaluation); the split task fills in their members."""
    parent = get_dataset(session, parent_id)
    if parent.status != DatasetStatus.READY:
        raise DatasetError(f"dataset {parent.name!r} is {parent.status}; only a ready dataset can be split")
    if parent.role != DatasetRole.TRAINING:
        raise DatasetError("an evaluation dataset is locked and cannot be split; split a training dataset")
    root = Path(parent.root)
    made = []
    for suffix, role in ((TRAINING_PART, DatasetRole.TRAINING), (EVALUATION_PART, DatasetRole.EVALUATION)):
        name = f"{parent.name[: 127 - len(suffix)]} {suffix}"
        made.append(create_dataset(session, name, role, DatasetSource.SPLIT, root, parent.created_by, parent.id, []))
    return made[0], made[1]


def set_members(session: Session, dataset_id: int, paths: list[str], split: dict[str, Any]) -> None:
    """Limit a split-off part to `paths` (relative to its parent's root), noting how the split was made."""
    dataset = get_dataset(session, dataset_id)
    dataset.members = {"paths": sorted(paths), "split": split}


def as_dict(dataset: Dataset, with_root: bool = False) -> dict[str, Any]:
    """The JSON form of a dataset (the server path only for admins)."""
    out: dict[str, Any] = {
        "id": dataset.id, "name": dataset.name, "role": dataset.role, "status": dataset.status,
        "source": dataset.source, "parent_id": dataset.parent_id, "gate": dataset.gate, "layout": dataset.layout,
        "counts": dataset.counts or {}, "audit": dataset.report or {}, "error": dataset.error,
        "fingerprint": dataset.fingerprint,
        "created_at": dataset.created_at.isoformat() if dataset.created_at else None,
        "validated_at": dataset.validated_at.isoformat() if dataset.validated_at else None,
    }
    split = (dataset.members or {}).get("split")
    if split:
        out["split"] = split
    if with_root:
        out["root"] = dataset.root
    return out


def total_files(dataset: Dataset) -> int:
    """How many files validation counted, over every split and class."""
    return sum(int(n) for per_class in (dataset.counts or {}).values() for n in per_class.values())


def ready_training_datasets(session: Session) -> list[Dataset]:
    """The READY training datasets, by name: what a training, a schedule or reviewed images may name."""
    return list(session.scalars(select(Dataset).where(
        Dataset.role == DatasetRole.TRAINING, Dataset.status == DatasetStatus.READY).order_by(Dataset.name)))
