"""Split a site's labelled dataset into a training part and a locked evaluation part.

Stratified by class, seeded, and grouped by the audit's near-duplicate groups: no image has a byte-identical
or near-duplicate twin on the other side. The parts are their parent's folder limited to relative paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold
from sqlalchemy.orm import Session

from fracture import datasets
from fracture.config import Settings
from fracture.datasets import DEFAULT_FRACTION, check_fraction
from fracture.db import session_scope
from fracture.models import Dataset
from trainer.dataset_validation import Inspection, inspect, validate_dataset
from trainer.heartbeat import beating

log = logging.getLogger(__name__)


def split_members(found: Inspection, root: Path, fraction: float = DEFAULT_FRACTION,
                  seed: int = 0) -> tuple[list[str], list[str]]:
    """(training paths, evaluation paths), relative to `root`: one fold of round(1/fraction) is evaluation.

    StratifiedGroupKFold keeps each near-duplicate group on one side and each side's classes near the whole's.
    """
    folds = max(2, round(1 / check_fraction(fraction)))
    md5s = sorted(found.report.group_of)
    groups = np.array([found.report.group_of[m] for m in md5s])
    labels = np.array([found.report.label_of[m] for m in md5s])
    if len(set(groups.tolist())) < folds:
        raise ValueError(f"too few distinct images ({len(set(groups.tolist()))} groups) to split into {folds} folds")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, held_out = next(cv.split(np.zeros(len(md5s)), labels, groups))
    evaluation = {md5s[i] for i in held_out}
    train_paths: list[str] = []
    eval_paths: list[str] = []
    for s in found.samples:
        (eval_paths if s.md5 in evaluation else train_paths).append(s.path.relative_to(root).as_posix())
    return sorted(train_paths), sorted(eval_paths)


def split_dataset(settings: Settings, parent_id: int, training_id: int, evaluation_id: int,
                  fraction: float = DEFAULT_FRACTION, seed: int = 0) -> None:
    """Fill in the two parts made by fracture.datasets.create_parts, then validate each."""
    with session_scope(settings.database_url) as session:
        parent = session.get(Dataset, parent_id)
        if parent is None:
            return
        root, members = Path(parent.root), datasets.member_paths(parent)
        for part in (training_id, evaluation_id):  # both parts beat until both are validated: the reaper fails
            datasets.beat_validation(session, part)  # a part whose beats stop (this worker was killed)

    def beat(session: Session) -> None:
        for part in (training_id, evaluation_id):
            datasets.beat_validation(session, part)

    with beating(settings, beat):
        _split_and_validate(settings, root, members, parent_id, training_id, evaluation_id, fraction, seed)


def _split_and_validate(settings: Settings, root: Path, members: set[str] | None, parent_id: int, training_id: int,
                        evaluation_id: int, fraction: float, seed: int) -> None:
    try:
        train_paths, eval_paths = split_members(inspect(root, members), root, fraction, seed)
    except Exception as exc:  # noqa: BLE001  (the parts show why they are unusable)
        log.exception("split of dataset %s failed", parent_id)
        with session_scope(settings.database_url) as session:
            for part in (training_id, evaluation_id):
                datasets.mark_invalid(session, part, f"The split failed: {exc}.")
        return
    how = {"parent_id": parent_id, "fraction": fraction, "seed": seed}
    with session_scope(settings.database_url) as session:
        datasets.set_members(session, training_id, train_paths, how)
        datasets.set_members(session, evaluation_id, eval_paths, how)
    validate_dataset(settings, training_id)
    validate_dataset(settings, evaluation_id)
