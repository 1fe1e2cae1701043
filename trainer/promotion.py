"""Safe promotion: a candidate replaces the active version only when both, measured on the same images, say so.

The images are every ready evaluation dataset marked as a gate (measured through real Evaluation rows, so they
show on the models page), or, when no dataset gates, the candidate's grouped test split (the same files for both
models). The rule itself is `judge`, a pure function of the measured figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture import audit_log, evaluations
from fracture.config import Settings
from fracture.db import session_scope
from fracture.ml.inference import Predictor
from fracture.models import Dataset, DatasetStatus, Evaluation, ModelVersion, RunStatus
from fracture.registry import active_version, load_predictor, promote, record_decision
from trainer.evaluate_dataset import evaluate
from trainer.metrics import binary_metrics

TEST_SPLIT = "the candidate's grouped test split"


@dataclass(frozen=True)
class Rule:
    """The floors, the tolerance and the size under which nothing is promoted automatically."""

    min_sensitivity: float = 0.95
    min_specificity: float = 0.90
    auc_tolerance: float = 0.01
    min_per_class: int = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> Rule:
        return cls(settings.promote_min_sensitivity, settings.promote_min_specificity,
                   settings.promote_auc_tolerance, settings.promote_min_per_class)


@dataclass(frozen=True)
class Measure:
    """One model on one set of images: counts per class and its figures at its own threshold."""

    positives: int
    negatives: int
    roc_auc: float | None
    sensitivity: float
    specificity: float

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> Measure:
        """Read an evaluation's (or binary_metrics') figures; counts from n_per_class or the confusion matrix."""
        per_class = metrics.get("n_per_class") or {}
        positive = metrics.get("positive_class")
        if positive in per_class:
            pos = int(per_class[positive])
        else:
            (tp, fn), _ = metrics["confusion_matrix"]
            pos = int(tp) + int(fn)
        auc = metrics.get("roc_auc")
        auc = None if auc is None or (isinstance(auc, float) and math.isnan(auc)) else float(auc)
        return cls(pos, int(metrics["n"]) - pos, auc, float(metrics["sensitivity"]), float(metrics["specificity"]))


@dataclass(frozen=True)
class Comparison:
    """Candidate and active (None when no version is active) measured on the same named set of images."""

    name: str
    candidate: Measure | None
    active: Measure | None
    problem: str | None = None  # why a figure is missing: an evaluation that failed


def judge(rule: Rule, sets: Sequence[Comparison], active_name: str | None) -> tuple[bool, str]:
    """Apply the rule on every set; returns (promote, one sentence saying why)."""
    if not sets:
        return False, "not promoted: no images to compare the candidate on (no gate dataset and no test split)"
    failures: list[str] = []
    passes: list[str] = []
    for s in sets:
        c = s.candidate
        if s.problem is not None or c is None:
            failures.append(f"on {s.name} {s.problem or 'the candidate could not be measured'}")
            continue
        if min(c.positives, c.negatives) < rule.min_per_class:
            failures.append(f"on {s.name} too few images to tell ({c.positives} positive, {c.negatives} negative; "
                            f"at least {rule.min_per_class} of each class needed)")
            continue
        missed = []
        if c.sensitivity < rule.min_sensitivity:
            missed.append(f"sensitivity {c.sensitivity:.3f} < {rule.min_sensitivity:.2f}")
        if c.specificity < rule.min_specificity:
            missed.append(f"specificity {c.specificity:.3f} < {rule.min_specificity:.2f}")
        if c.roc_auc is None:
            missed.append("ROC-AUC undefined")
        elif active_name is not None:
            if s.active is None or s.active.roc_auc is None:
                missed.append(f"no ROC-AUC of the active version {active_name} to compare with")
            elif c.roc_auc < s.active.roc_auc - rule.auc_tolerance:
                missed.append(f"ROC-AUC {c.roc_auc:.3f} < {active_name}'s {s.active.roc_auc:.3f} "
                              f"- {rule.auc_tolerance:g}")
        if missed:
            failures.append(f"on {s.name} " + ", ".join(missed))
            continue
        versus = (f" (active {active_name}: {s.active.roc_auc:.3f})"
                  if active_name is not None and s.active is not None and s.active.roc_auc is not None else "")
        passes.append(f"on {s.name} ROC-AUC {c.roc_auc:.3f}{versus}, sensitivity {c.sensitivity:.3f}, "
                      f"specificity {c.specificity:.3f} ({c.positives}+{c.negatives} images)")
    if failures:
        return False, "not promoted: " + "; ".join(failures)
    return True, "promoted: " + "; ".join(passes)


# ---------------------------------------------------------------- measuring both models


def decide(settings: Settings, candidate_id: int, test_samples: Sequence[Sequence[Any]] | None) -> tuple[bool, str]:
    """Measure the candidate and the active version on the same images and apply the rule."""
    with session_scope(settings.database_url) as session:
        active = active_version(session)
        active_id, active_name = (active.id, active.name) if active is not None else (None, None)
        gates = _gate_datasets(session)
    if gates:
        sets = [_on_dataset(settings, candidate_id, active_id, dataset_id, name) for dataset_id, name in gates]
    elif test_samples:
        sets = [_on_files(settings, candidate_id, active_id, test_samples)]
    else:
        sets = []
    return judge(Rule.from_settings(settings), sets, active_name)


def decide_and_apply(settings: Settings, candidate_id: int, test_samples: Sequence[Sequence[Any]] | None,
                     force: bool = False) -> tuple[bool, str]:
    """Decide (unless `force`), record the reason on the candidate and promote it when the rule allows."""
    if force:
        promoted, reason = True, "promoted: forced by the run's parameters (the safe-promotion checks were skipped)"
    else:
        promoted, reason = decide(settings, candidate_id, test_samples)
    with session_scope(settings.database_url) as session:
        candidate = session.get_one(ModelVersion, candidate_id)
        if promoted:
            replaced = active_version(session)
            promote(session, candidate)
            audit_log.record(session, audit_log.TRAINER, "model.promote", candidate.name,
                             {"id": candidate.id, "replaced": replaced.name if replaced is not None else None,
                              "automatic": True, "reason": reason})
        record_decision(candidate, reason)
    return promoted, reason


def _gate_datasets(session: Session) -> list[tuple[int, str]]:
    """(id, name) of every ready evaluation dataset that gates promotion."""
    rows = session.execute(select(Dataset.id, Dataset.name).where(
        Dataset.gate.is_(True), Dataset.status == DatasetStatus.READY).order_by(Dataset.id))
    return [(dataset_id, name) for dataset_id, name in rows]


def _on_dataset(settings: Settings, candidate_id: int, active_id: int | None, dataset_id: int,
                dataset_name: str) -> Comparison:
    """Both versions on a gate dataset, each through an Evaluation row (the active's reused when still current)."""
    name = f"dataset {dataset_name!r}"
    candidate, problem = _evaluation(settings, candidate_id, dataset_id, reuse=False)
    if problem is not None:
        return Comparison(name, None, None, f"the candidate could not be measured ({problem})")
    if active_id is None:
        return Comparison(name, candidate, None)
    active, problem = _evaluation(settings, active_id, dataset_id, reuse=True)
    if problem is not None:
        return Comparison(name, candidate, None, f"the active version could not be measured ({problem})")
    return Comparison(name, candidate, active)


def _evaluation(settings: Settings, version_id: int, dataset_id: int, reuse: bool) -> tuple[Measure | None, str | None]:
    """Evaluate a version on a whole dataset in process (or reuse one done since the dataset's validation)."""
    with session_scope(settings.database_url) as session:
        done = _current_evaluation(session, version_id, dataset_id) if reuse else None
        evaluation_id = done if done is not None else evaluations.create_evaluation(session, version_id, dataset_id).id
    if done is None:
        evaluate(settings, evaluation_id)
    with session_scope(settings.database_url) as session:
        row = session.get_one(Evaluation, evaluation_id)
        if row.status != RunStatus.DONE:
            return None, row.error or f"evaluation {evaluation_id} did not finish"
        return Measure.from_metrics(row.metrics), None


def _current_evaluation(session: Session, version_id: int, dataset_id: int) -> int | None:
    """A finished whole-dataset evaluation of the version made after the dataset was last validated."""
    dataset = session.get_one(Dataset, dataset_id)
    stmt = (select(Evaluation).where(Evaluation.model_version_id == version_id, Evaluation.dataset_id == dataset_id,
                                     Evaluation.split.is_(None), Evaluation.status == RunStatus.DONE)
            .order_by(Evaluation.finished_at.desc()))
    for row in session.scalars(stmt):
        if dataset.validated_at is None or row.created_at >= dataset.validated_at:
            return row.id
    return None


def _on_files(settings: Settings, candidate_id: int, active_id: int | None,
              samples: Sequence[Sequence[Any]]) -> Comparison:
    """Both versions on the same image files (the candidate's test split), each at its own threshold."""
    with session_scope(settings.database_url) as session:
        versions = {vid: session.get_one(ModelVersion, vid) for vid in (candidate_id, active_id) if vid is not None}
    paths = [Path(str(path)) for path, _ in samples]
    probs: dict[int, list[float | None]] = {}
    predictors: dict[int, Predictor] = {}
    for vid, version in versions.items():
        try:
            # SHA-256 checked: a replaced or damaged file is not measured (nor promoted, nor kept by a stale figure).
            predictors[vid] = load_predictor(settings, version)
        except Exception as e:  # a broken active file must not promote the candidate by default
            return Comparison(TEST_SPLIT, None, None, f"version {vid} could not be loaded ({e})")
        probs[vid] = [p.probability for p in predictors[vid].predict(paths)]
    positive = predictors[candidate_id].ckpt.positive_class
    # Only the images every model could read: both are measured on exactly the same ones.
    keep = [i for i in range(len(paths)) if all(probs[vid][i] is not None for vid in probs)]
    y = np.array([1 if _is_positive(samples[i][1], positive) else 0 for i in keep])

    def measure(vid: int) -> Measure:
        prob = np.array([probs[vid][i] for i in keep], dtype=float)
        return Measure.from_metrics(binary_metrics(y, prob, predictors[vid].ckpt.threshold))

    if not keep:
        return Comparison(TEST_SPLIT, None, None, "none of the test images could be read")
    return Comparison(TEST_SPLIT, measure(candidate_id), measure(active_id) if active_id is not None else None)


def _is_positive(label: Any, positive: str) -> bool:
    """A sample's label is its class name (or 1 for the positive class)."""
    return label == positive or (isinstance(label, int | float) and not isinstance(label, bool) and label == 1)
