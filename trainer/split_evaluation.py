"""Score the network on a prepared run's splits: per epoch on val, and at the end as the worker serves it (the
threshold chosen on val, the out-of-distribution detector, the model card's robustness audit of test)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from fracture.ml import ood
from fracture.ml.checkpoint import POSITIVE_CLASS, Checkpoint
from fracture.ml.inference import Predictor
from fracture.ml.net import ModelArgs, fold_batchnorm, has_features
from fracture.ml.preprocess import PreprocessSpec, forward_views, forward_views_features, normalize
from trainer.augmentation import AcquisitionChange
from trainer.dataset_scan import SPLITS
from trainer.decoded_images import batches
from trainer.metrics import at_most, binary_metrics, choose_threshold, intervals
from trainer.prepared_data import Prepared
from trainer.robustness import acquisition_audit, worst

CARD_AUDIT_IMAGES = 600  # test images the model card's robustness audit changes (bench/robustness.py: all)


@torch.inference_mode()
def evaluate_split(model: nn.Module, data: Prepared, split: str, spec: PreprocessSpec, device: torch.device,
             batch_size: int = 256, views: str | None = None,
             features: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities of the positive class on a split, averaged over `views` (default: the spec's, as
    served): (y, prob, mean loss). With a `features` list, the out-of-distribution detector's features of each
    batch, from the same forward passes, are appended to it."""
    views = spec.views if views is None else views
    with_features = features is not None and has_features(model)
    model.eval()
    rows = data.split_index[split]
    probs, losses = [], []
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    if views != "identity":
        batch_size = max(1, batch_size // 8)  # 8 passes per batch; on 2 CPU cores 32 images a pass ran fastest
    for idx in batches(len(rows), batch_size, None, shuffle=False):
        batch = rows[idx]
        x = normalize(data.images[batch].to(device), spec)
        with spec.autocast(device):  # as served: bfloat16 on CUDA, and on the CPU where the spec says so
            # Each view is laid out in channels_last.
            if with_features:
                logits, feats = forward_views_features(model, x, views)
                features.append(feats.float().cpu().numpy())  # type: ignore[union-attr]  # with_features: a list
            else:
                logits = forward_views(model, x, views)
            logits = logits.float()
        y = data.labels[batch].to(device)
        losses.append(float(loss_fn(logits, y)))
        probs.append(torch.sigmoid(logits).cpu().numpy())
    y_true = data.labels[rows].numpy()
    prob = np.concatenate(probs) if probs else np.zeros(0)
    return y_true, prob, sum(losses) / max(len(rows), 1)


Curves = dict[str, tuple[np.ndarray, np.ndarray]]
FinalEvaluation = tuple[Curves, float, dict[str, Any], ood.Detector | None]  # curves, threshold, metrics, detector


def final_evaluation(model: nn.Module, data: Prepared, spec: PreprocessSpec, device: torch.device,
                     min_sensitivity: float, min_specificity: float,
                     acquisition: bool = False) -> tuple[Curves, float, dict[str, Any], ood.Detector | None]:
    """Evaluate the network exactly as the worker serves it on every split, choose the threshold on val and fit
    the out-of-distribution detector on train (threshold on val): (curves, threshold, metrics, detector).

    With `acquisition`, the detector is fitted on train and on a copy of train changed as other departments'
    machines change X-rays (trainer.acquisition), and calibrated on val and a changed copy of val: ordinary
    acquisition changes are then in distribution, made-up scenes still are not. The threshold is then chosen on
    val and on the images of its changed copy that the detector lets through, so that it holds sensitivity and
    specificity on the images a department's machines change as well as on the source's own."""
    inference_net = fold_batchnorm(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    curves: Curves = {}
    features: dict[str, np.ndarray] = {}
    for split in SPLITS:
        batches_of_features: list[np.ndarray] = []
        y, prob, _ = evaluate_split(inference_net, data, split, spec, device, features=batches_of_features)
        if len(y):
            curves[split] = (y, prob)
        if batches_of_features:
            features[split] = np.concatenate(batches_of_features)
    y_val, p_val = curves.get("val", (np.zeros(0), np.zeros(0)))
    detector = None
    if "train" in features and "val" in features:
        fit_on, calibrate_on = features["train"], features["val"]
        labels = data.labels[data.split_index["train"]].numpy()
        if acquisition:
            changed = changed_features(inference_net, data, spec, device)
            fit_on = np.concatenate([fit_on, changed["train"].features])
            labels = np.concatenate([labels, labels])
            calibrate_on = np.concatenate([calibrate_on, changed["val"].features])
        detector = ood.fit(fit_on, labels, calibrate_on)
        if acquisition:
            kept = ~ood.flags(detector, changed["val"].features)
            y_val = np.concatenate([y_val, changed["val"].y[kept]])
            p_val = np.concatenate([p_val, changed["val"].prob[kept]])
    threshold = choose_threshold(y_val, p_val, min_sensitivity, min_specificity) if len(np.unique(y_val)) == 2 else 0.5
    metrics: dict[str, Any] = {split: binary_metrics(y, prob, threshold) | {"intervals": intervals(y, prob, threshold)}
                               for split, (y, prob) in curves.items()}
    metrics["threshold_on"] = ("val and the images of an acquisition-changed copy of it that the detector lets "
                               f"through ({len(y_val)} images)" if acquisition and detector is not None else "val")
    if detector is not None:
        for split, f in features.items():
            metrics[split]["ood_flagged"] = ood.flagged_share(detector, f)
    return curves, threshold, metrics, detector


def changed_copy(data: Prepared, split: str, change: AcquisitionChange) -> Prepared:
    """Only `split` of `data`, each image changed by the next draw of `change` (in the split's order; drawn on the
    decoded sources when the data keeps them)."""
    rows = data.split_index[split]
    sources = None if data.sources is None else data.sources[rows]
    return replace(data, images=change(data.images[rows], sources), labels=data.labels[rows],
                   split_index={split: np.arange(len(rows))}, sources=None)


@dataclass(frozen=True)
class Changed:
    """A changed copy of a split as served: the detector's features, the labels and the probabilities."""

    features: np.ndarray
    y: np.ndarray
    prob: np.ndarray


def changed_features(model: nn.Module, data: Prepared, spec: PreprocessSpec, device: torch.device,
                     seed: int = 0) -> dict[str, Changed]:
    """One acquisition-changed copy of train and of val (seeded: the same copies for the same data) at the served
    views: the detector's features, labels and probabilities of each."""
    change = AcquisitionChange(seed, spec)
    out = {}
    for split in ("train", "val"):
        batches_of_features: list[np.ndarray] = []
        y, prob, _ = evaluate_split(model, changed_copy(data, split, change), split, spec, device,
                                    features=batches_of_features)
        out[split] = Changed(np.concatenate(batches_of_features), y, prob)
    return out


def robustness_audit(model: nn.Module, margs: ModelArgs, spec: PreprocessSpec, data: Prepared, threshold: float,
                     detector: ood.Detector | None, device: torch.device) -> dict[str, Any]:
    """The model as served (views, threshold, detector) on the test split under the audit's acquisition changes,
    applied at the network's input size, or to the decoded sources when the data keeps them ("equalize-full" with
    acquisition: Prepared.sources), before the spec's equalisation (trainer.robustness; bench/robustness.py applies
    them at full size)."""
    positive = POSITIVE_CLASS if POSITIVE_CLASS in data.classes else data.classes[0]
    served = Checkpoint(model, margs, spec, data.classes, positive, threshold, {}, detector)
    predictor = Predictor(served, device)
    every = len(data.split_index["test"])
    rows = at_most(data.split_index["test"], CARD_AUDIT_IMAGES)  # the audit costs a test split's inference a change
    held = data.images if data.sources is None else data.sources  # fit_input makes inputs of either
    images = [PILImage.fromarray(held[r, 0].numpy()) for r in rows]
    audit_rows = acquisition_audit(predictor, images, data.labels[rows].numpy())
    at = "input size" if data.sources is None else f"{held.shape[-1]} px, before equalising"
    return {"split": "test", "at": at, "sampled": len(rows), "of": every, "rows": audit_rows,
            "worst": worst(audit_rows)}


def test_members(data: Prepared) -> list[list[str]]:
    """The test split as evaluated: [[path, label], ...], one file per distinct image (for comparing versions)."""
    rows = data.split_index["test"].tolist()
    return [[str(data.paths[data.row_md5[r]]), data.report.label_of[data.row_md5[r]]] for r in rows]
