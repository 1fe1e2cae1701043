"""The state of registered datasets: the only code that creates datasets and records their validation.

A dataset is a folder the system reads (never writes): a server folder under settings.dataset_roots, the
storage folder an uploaded zip was unpacked into, or a part split off another dataset (its parent's folder
limited to `members`). Validation (layout, counts, audit) runs in the trainer's worker and lands here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.config import Settings
from fracture.models import Dataset, DatasetRole, DatasetStatus

_NAME = re.compile(r"^[\w .()+-]{1,128}$")


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
    try:
        return DatasetRole(role or DatasetRole.TRAINING)
    except ValueError:
        raise DatasetError(f"role must be one of {', '.join(r.value for r in DatasetRole)}") from None


def create_dataset(
    session: Session, name: str, role: str | None, source: str, root: Path, created_by: int | None = None,
    parent_id: int | None = None, members: list[str] | None = None,
) -> Dataset:
    """Add a dataset to be validated (flushed, not committed: the caller commits, then sends the validation)."""
    dataset = Dataset(
        name=check_name(session, name), role=check_role(role), status=DatasetStatus.VALIDATING, source=source,
        root=str(root), parent_id=parent_id, members={"paths": sorted(members)} if members is not None else {},
        created_by=created_by,
    )
    session.add(dataset)
    session.flush()
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


def mark_invalid(session: Session, dataset_id: int, reason: str) -> None:
    """Mark a dataset unusable, with one readable sentence saying why."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is not None:
        dataset.status, dataset.error, dataset.validated_at = DatasetStatus.INVALID, reason, datetime.now(UTC)


def set_gate(session: Session, dataset_id: int, gate: bool) -> Dataset:
    """Make an evaluation dataset gate automatic promotion (or stop it); training datasets never gate."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetError(f"no dataset with id {dataset_id}")
    if gate and dataset.role != DatasetRole.EVALUATION:
        raise DatasetError("only an evaluation (locked) dataset can gate promotion")
    dataset.gate = gate
    return dataset
