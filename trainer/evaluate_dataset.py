"""Evaluate a model version on a registered dataset: the served network, the trainer's metrics and plots, stored.

Plain code that the `evaluations.run` task calls (and tests call directly). One row per distinct image (by
MD5): the dataset's duplicated files would otherwise count twice. Images whose copies carry both labels and
files that cannot be decoded are left out and counted in the metrics.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from fracture import evaluations
from fracture.config import Settings
from fracture.datasets import member_paths
from fracture.db import session_scope
from fracture.ml.checkpoint import CheckpointError
from fracture.ml.inference import Predictor
from fracture.ml.preprocess import decode_gray
from fracture.models import Dataset, ModelVersion
from fracture.registry import load_predictor
from fracture.storage import Storage
from trainer import plots
from trainer.dataset_scan import Sample, scan
from trainer.heartbeat import beating
from trainer.metrics import at_most, binary_metrics, intervals, json_safe
from trainer.robustness import acquisition_audit, worst

log = logging.getLogger(__name__)
_EXAMPLES = 10  # undecodable files named in the metrics; the count covers them all
AUDIT_MAX_IMAGES = 2000  # images the robustness audit changes (a seeded sample of larger datasets)
AUDIT_SIDE = 512  # pixels on the long side at which the audit's changes are applied


class EvaluationFailed(RuntimeError):
    """The evaluation cannot go on; the message is the sentence recorded on the row."""


@dataclass(frozen=True)
class Plan:
    """What an evaluation reads, copied out of the database so no session stays open while it runs."""

    evaluation_id: int
    version_name: str
    version: ModelVersion  # its row as read (detached): what registry.load_predictor checks and loads
    threshold: float
    dataset_name: str
    root: Path
    members: set[str] | None
    split: str | None
    audit: bool = False


def evaluate(settings: Settings, evaluation_id: int) -> bool:
    """Run Evaluation `evaluation_id` and record its metrics and plots (or why it failed); True when done."""
    url = settings.database_url
    try:
        with session_scope(url) as session:
            plan = _plan(settings, session, evaluation_id)
    except LookupError as e:
        log.warning("%s; nothing to evaluate", e)
        return False
    if plan is None:
        return False  # already finished or failed: a redelivered task does nothing
    ids = {"evaluation_id": evaluation_id}
    log.info("evaluation %s started: model %s on %s (%s)", evaluation_id, plan.version_name, plan.dataset_name,
             plan.split or "every image", extra=ids)
    try:
        with beating(settings, lambda s: evaluations.beat_evaluation(s, evaluation_id)):
            metrics, stored = measure(settings, plan)
    except Exception as e:
        log.exception("evaluation %s failed", evaluation_id, extra=ids)
        with session_scope(url) as session:
            evaluations.fail_evaluation(session, evaluation_id, _reason(e))
        return False
    with session_scope(url) as session:
        evaluations.finish_evaluation(session, evaluation_id, metrics, stored)
    log.info("evaluation %s finished: ROC-AUC %s", evaluation_id, metrics.get("roc_auc"), extra=ids)
    return True


def _plan(settings: Settings, session: Session, evaluation_id: int) -> Plan | None:
    """Mark the evaluation running and read what it needs; None when it already ended."""
    evaluation = evaluations.start_evaluation(session, evaluation_id)
    if evaluation is None:
        return None
    version = session.get_one(ModelVersion, evaluation.model_version_id)
    dataset = session.get_one(Dataset, evaluation.dataset_id)
    return Plan(
        evaluation_id, version.name, version, float(version.threshold),
        dataset.name, Path(dataset.root), member_paths(dataset), evaluation.split, bool(evaluation.audit),
    )


def _reason(e: Exception) -> str:
    """One readable sentence for the row; the traceback went to the log."""
    if isinstance(e, (EvaluationFailed, CheckpointError, FileNotFoundError, ValueError)):
        return str(e)
    return f"the evaluation failed unexpectedly ({type(e).__name__}: {e}); the trainer's log has the details"


def measure(settings: Settings, plan: Plan) -> tuple[dict[str, Any], dict[str, str]]:
    """Predict every distinct image of the plan's dataset (or split); return (metrics, {plot name: storage key})."""
    predictor = load_predictor(settings, plan.version)
    samples, classes = scan(plan.root, plan.members)
    if sorted(classes) != sorted(predictor.ckpt.classes):
        raise EvaluationFailed(f"the dataset's classes ({', '.join(classes)}) are not the model's "
                               f"({', '.join(predictor.ckpt.classes)})")
    if plan.split is not None:
        samples = [s for s in samples if s.split == plan.split]
        if not samples:
            raise EvaluationFailed(f"dataset {plan.dataset_name!r} has no images in split {plan.split!r}")
    rows, conflicts = distinct_images(samples)
    positive = predictor.ckpt.positive_class
    y, prob, undecodable, unlike, decoded = [], [], [], [], []
    for row, p in zip(rows, predictor.predict([s.path for s in rows]), strict=True):
        if p.probability is None:
            undecodable.append({"file": row.rel, "error": p.error or "undecodable"})
            continue
        decoded.append(row)
        y.append(1 if row.label == positive else 0)
        prob.append(p.probability)
        unlike.append(p.in_distribution is False)
    if not y:
        raise EvaluationFailed(f"none of the {len(rows)} images of dataset {plan.dataset_name!r} could be decoded")
    y_true, probs = np.array(y), np.array(prob)
    metrics: dict[str, Any] = json_safe(binary_metrics(y_true, probs, plan.threshold))
    negative = next(c for c in predictor.ckpt.classes if c != positive)
    (tp, fn), (fp, tn) = metrics["confusion_matrix"]
    metrics.update(
        files=len(samples), distinct_images=len(rows), undecodable=len(undecodable),
        undecodable_examples=undecodable[:_EXAMPLES], label_conflicts=conflicts,
        n_per_class={positive: int(y_true.sum()), negative: int(len(y_true) - y_true.sum())},
        confusion={"tp": tp, "fn": fn, "fp": fp, "tn": tn}, positive_class=positive,
        split=plan.split or "all", model_version=plan.version_name, dataset=plan.dataset_name,
        # The share of the decoded images that the model's detector flags as unlike its training data (None when
        # the checkpoint has no detector): a high share says these metrics are measured off the model's ground.
        ood_flagged=float(np.mean(unlike)) if predictor.detector is not None else None,
        # How far these figures could move on another sample of this size (trainer.metrics.intervals): a
        # department's own evaluation is often a few hundred images.
        intervals=intervals(y_true, probs, plan.threshold),
    )
    if plan.audit:
        metrics["robustness"] = robustness(predictor, [s.path for s in decoded], y_true, settings.max_image_pixels)
    return metrics, _store_plots(settings, plan, y_true, probs, metrics)


def robustness(predictor: Predictor, paths: list[Path], y: np.ndarray, max_pixels: int) -> dict[str, Any]:
    """The robustness audit (trainer.robustness) on at most AUDIT_MAX_IMAGES of the decoded images (a seeded
    sample), each changed at up to AUDIT_SIDE pixels on its long side, then served as the workers serve it."""
    pick = at_most(np.arange(len(paths)), AUDIT_MAX_IMAGES)
    images = []
    for i in pick:
        gray = decode_gray(paths[i], AUDIT_SIDE, max_pixels)
        gray.thumbnail((AUDIT_SIDE, AUDIT_SIDE), Image.Resampling.BILINEAR)
        images.append(gray)
    rows = acquisition_audit(predictor, images, y[pick].astype(float))
    return {"split": "as evaluated", "at": f"up to {AUDIT_SIDE} px", "sampled": int(len(pick)),
            "of": len(paths), "rows": rows, "worst": worst(rows)}


def distinct_images(samples: list[Sample]) -> tuple[list[Sample], int]:
    """One sample per distinct MD5 (the first in scan order); images filed under both classes are left out.

    Returns (samples kept, number of images left out for conflicting labels)."""
    by_md5: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_md5[s.md5].append(s)
    kept = [copies[0] for copies in by_md5.values() if len({c.label for c in copies}) == 1]
    return kept, len(by_md5) - len(kept)


def _store_plots(settings: Settings, plan: Plan, y: np.ndarray, prob: np.ndarray,
                 metrics: dict[str, Any]) -> dict[str, str]:
    """ROC (when both classes are present) and confusion plots, stored under evaluations/<id>/."""
    storage = Storage(settings.storage_dir)
    label = f"{plan.dataset_name} ({plan.split or 'all'})"
    keys: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"confusion": Path(tmp) / "confusion.png"}
        plots.confusion(files["confusion"], {label: metrics}, names=[label])
        if metrics["roc_auc"] is not None:
            files["roc"] = Path(tmp) / "roc.png"
            plots.roc(files["roc"], {label: (y, prob)}, {label: metrics})
        for name, file in sorted(files.items()):
            key = f"evaluations/{plan.evaluation_id}/{name}.png"
            storage.write_bytes(key, file.read_bytes())
            keys[name] = key
    return keys
