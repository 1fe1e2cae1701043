"""Choose train/val/test membership: as the folders give it, or re-split by duplicate groups."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from trainer.audit import AuditReport
from trainer.dataset_scan import SPLITS, Sample

POLICIES = ("given", "grouped")


def given_split(samples: list[Sample]) -> dict[str, list[str]]:
    """Distinct images (MD5s) of each split as the folders give them; a copy may sit in two splits."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        out[split] = sorted({s.md5 for s in samples if s.split == split})
    return out


def grouped_split(report: AuditReport, seed: int = 0, folds: int = 7) -> dict[str, list[str]]:
    """Re-split the union by duplicate group, stratified by class: no group spans two splits.

    With 7 folds, one fold (about 14%) is test, one is val, the other five are train.
    """
    md5s = sorted(report.group_of)
    groups = np.array([report.group_of[m] for m in md5s])
    labels = np.array([report.label_of[m] for m in md5s])
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(md5s), dtype=int)
    for k, (_, idx) in enumerate(cv.split(np.zeros(len(md5s)), labels, groups)):
        fold_of[idx] = k
    names = np.array(md5s)
    return {
        "test": sorted(names[fold_of == 0].tolist()),
        "val": sorted(names[fold_of == 1].tolist()),
        "train": sorted(names[fold_of >= 2].tolist()),
    }


def make_split(policy: str, samples: list[Sample], report: AuditReport, seed: int = 0) -> dict[str, list[str]]:
    if policy == "given":
        return given_split(samples)
    if policy == "grouped":
        return grouped_split(report, seed)
    raise ValueError(f"unknown split policy {policy!r}; choose one of {POLICIES}")
