"""Out-of-distribution detector: how unlike the model's training images an image looks, to the model itself.

Measured on the shipped model against alternatives (fracture/release/ood.md): class-conditional Gaussians with
one shared covariance (the Mahalanobis detector of Lee et al., 2018) on the mean and standard deviation of
every residual block's feature maps, averaged over the served test-time views. The early blocks see the look of
an image (its exposure, texture, markers), the last one what the classifier uses, so the detector catches both
another site's X-rays and non-X-rays. It is fitted on the training split, and its threshold is set on the
validation split by split conformal calibration (conformal_threshold), so that at most 5% of images like the
training data are flagged (in expectation); images of other sites never tune it.

It runs in the same forward pass as the prediction (the pooled statistics come from feature maps the network
computes anyway) and is stored in the checkpoint as plain tensors (loadable with weights_only=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KIND = "mahalanobis-blocks"
DEFAULT_QUANTILE = 0.95


@dataclass
class Detector:
    """Class means (K, D) and a shared precision matrix (D, D) of the pooled features; `threshold` is a distance."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """The Mahalanobis distance of each row of `features` (N, D) to the nearest class mean."""
        x = features.to(self.means.dtype)
        d2 = []
        for mean in self.means:
            c = x - mean
            d2.append(((c @ self.precision) * c).sum(1))
        return torch.stack(d2).min(0).values.clamp_min(0).sqrt()

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """The distance relative to the threshold: an image scoring 1 or more is flagged out of distribution."""
        return self.distance(features) / self.threshold

    def to_payload(self) -> dict[str, Any]:
        return {"kind": KIND, "means": self.means.cpu().clone(), "precision": self.precision.cpu().clone(),
                "threshold": float(self.threshold), "quantile": float(self.quantile)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> Detector | None:
        """The detector stored in a checkpoint, or None for a checkpoint without one (or of an unknown kind)."""
        if not payload or payload.get("kind") != KIND:
            return None
        return cls(means=payload["means"].float(), precision=payload["precision"].float(),
                   threshold=float(payload["threshold"]), quantile=float(payload.get("quantile", DEFAULT_QUANTILE)))


def fit(train: np.ndarray, labels: np.ndarray, val: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> Detector:
    """Fit on the training split's features and labels; set the threshold at `quantile` of the val distances."""
    train = np.asarray(train, dtype=np.float64)
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([train[labels == c].mean(0) for c in classes])
    centred = np.concatenate([train[labels == c] - means[i] for i, c in enumerate(classes)])
    # Ledoit-Wolf shrinkage: a well-conditioned covariance from ~2,500 images in a few hundred dimensions.
    from sklearn.covariance import LedoitWolf  # fitting only (the trainer): serving does not import scikit-learn

    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    detector = Detector(torch.tensor(means, dtype=torch.float32), torch.tensor(precision, dtype=torch.float32), 1.0,
                        quantile)
    distances = np.sort(detector.distance(torch.tensor(np.asarray(val), dtype=torch.float32)).numpy())
    detector.threshold = conformal_threshold(distances, quantile)
    return detector


def conformal_threshold(distances: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The ceil((n + 1) * quantile)-th smallest of n calibration distances (split conformal): a new image like the
    calibration images is flagged with probability at most 1 - quantile. Fewer than 1 / (1 - quantile) images
    give the largest one."""
    n = len(distances)
    if not n:
        return 1.0
    k = min(n, math.ceil((n + 1) * quantile))
    return float(np.sort(np.asarray(distances))[k - 1])


def flags(detector: Detector, features: np.ndarray) -> np.ndarray:
    """(N,) booleans: whether `detector` flags each image (a row of `features`) out of distribution."""
    return (detector.score(torch.tensor(np.asarray(features), dtype=torch.float32)) >= 1).numpy()


def flagged_share(detector: Detector, features: np.ndarray) -> float:
    """The share of images that `detector` flags out of distribution."""
    if not len(features):
        return float("nan")
    return float(flags(detector, features).mean())
