"""Binary classification metrics per split, computed with scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import beta, bootstrap, rankdata
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)


def json_safe(metrics: dict[str, object]) -> dict[str, object]:
    """NaN (ROC-AUC of a one-class sample) as None: rows and the API carry JSON, which has no NaN."""
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in metrics.items()}


def at_most(rows: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """`rows`, or a seeded sample of `limit` of them in their order when there are more."""
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).permutation(rows)[:limit])


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, object]:
    """Accuracy, sensitivity, specificity, precision, F1, ROC-AUC and the confusion matrix.

    `y_true` is 1 for the positive class (fractured); `prob` is P(positive).
    """
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_true, pred)),
        "sensitivity": float(recall_score(y_true, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y_true, pred, pos_label=0, zero_division=0)),
        "precision": float(precision_score(y_true, pred, pos_label=1, zero_division=0)),
        "f1": float(f1_score(y_true, pred, pos_label=1, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, prob)) if both else float("nan"),
        # rows: true fractured, true not fractured; columns: predicted fractured, not fractured
        "confusion_matrix": [[int(tp), int(fn)], [int(fp), int(tn)]],
    }


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float = 0.96,
                     min_specificity: float = 0.95, confidence: float = 0.95) -> float:
    """The threshold at which val meets both floors with the most room: the val score maximising the smaller of
    (lower confidence bound of sensitivity - min_sensitivity) and (that of specificity - min_specificity).

    The bounds are one-sided Clopper-Pearson bounds at `confidence`, so the class with fewer val images (and the
    noisier estimate) needs more room. The previous rule (best val specificity with val sensitivity >= 0.97) set
    the threshold on the few lowest-scoring fractures of val; retrained with other seeds, the same recipe then
    reached only 0.89-0.92 sensitivity on unseen images. Where no threshold meets both floors, the one closest
    to meeting them is returned.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    if not len(pos) or not len(neg):
        return 0.5
    candidates = np.unique(p)
    hits = len(pos) - np.searchsorted(pos, candidates, "left")  # fractures at or above each threshold
    rejections = np.searchsorted(neg, candidates, "left")  # non-fractures below it
    alpha = 1.0 - confidence
    margin = np.minimum(_lower_bound(hits, len(pos), alpha) - min_sensitivity,
                        _lower_bound(rejections, len(neg), alpha) - min_specificity)
    return float(candidates[int(np.argmax(margin))])


def _lower_bound(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a proportion k / n at level 1 - alpha."""
    k = np.asarray(k)
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


CONFIDENCE = 0.95  # the level of every interval below
RESAMPLES = 2000
BCA_MAX = 5000  # BCa's jackknife costs one statistic per image: above this many, the percentile interval


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """Two-sided Clopper-Pearson (exact binomial) interval of the proportion k / n; None when n is 0."""
    if n <= 0:
        return None
    alpha = 1.0 - confidence
    low = float(beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(1 - alpha / 2, k + 1, n - k)) if k < n else 1.0
    return [low, high]


def _auc_labelled(y: np.ndarray, prob: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC-AUC from the positives' rank sum (average ranks for ties), along `axis` for many samples at once."""
    ranks = rankdata(prob, axis=axis)
    pos = y.sum(axis=axis)
    neg = y.shape[axis] - pos
    return ((ranks * y).sum(axis=axis) - pos * (pos + 1) / 2) / (pos * neg)


def _auc(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC-AUC of the positives' scores over the negatives', given apart (the stratified bootstrap's samples)."""
    labels = np.r_[np.ones(pos.shape[axis]), np.zeros(neg.shape[axis])]
    return _auc_labelled(labels, np.concatenate([pos, neg], axis=axis), axis)


def _paired_auc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return _auc_labelled(y, a, axis) - _auc_labelled(y, b, axis)


def bootstrap_interval(data: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], paired: bool = False,
                       confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> list[float] | None:
    """scipy.stats.bootstrap's BCa interval of a vectorised `statistic`, seeded; the percentile interval where BCa
    is undefined (every resample gives the same value) or the samples hold more than BCA_MAX values (its jackknife
    would take a minute; at that size the two agree closely); None if neither is finite."""
    large = sum(len(d) for d in data) // (len(data) if paired else 1) > BCA_MAX
    for method in ("percentile",) if large else ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's own warning when it is undefined: the fallback handles it
            ci = bootstrap(data, statistic, vectorized=True, paired=paired, n_resamples=resamples,
                           confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
                           batch=200).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return [float(ci.low), float(ci.high)]
    return None


def auc_interval(y_true: np.ndarray, prob: np.ndarray, confidence: float = CONFIDENCE,
                 resamples: int = RESAMPLES, seed: int = 0) -> list[float] | None:
    """A stratified bootstrap interval of ROC-AUC: the fractured and the not-fractured images resampled apart (so
    every resample keeps both classes and their sizes). None with fewer than two images of either class."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) < 2 or len(neg) < 2:
        return None
    return bootstrap_interval((pos, neg), _auc, confidence=confidence, resamples=resamples, seed=seed)


def auc_difference_interval(y_true: np.ndarray, a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE,
                            resamples: int = RESAMPLES, seed: int = 0) -> list[float] | None:
    """The interval of ROC-AUC(a) - ROC-AUC(b), two models' scores of the same images: a paired bootstrap (each
    resample draws images with both scores), so what the images share does not widen it."""
    y = np.asarray(y_true).astype(np.float64)
    if len(np.unique(y)) < 2:
        return None
    return bootstrap_interval((y, np.asarray(a, np.float64), np.asarray(b, np.float64)), _paired_auc_difference,
                              paired=True, confidence=confidence, resamples=resamples, seed=seed)


def intervals(y_true: np.ndarray, prob: np.ndarray, threshold: float,
              confidence: float = CONFIDENCE) -> dict[str, object]:
    """How far the figures of binary_metrics could move on another sample of the same size: ROC-AUC's stratified
    bootstrap interval and the exact binomial intervals of sensitivity and specificity at `threshold`. The
    figures of a few hundred images are estimates, and a target is only shown to be met, or missed, when its
    interval clears it."""
    y = np.asarray(y_true).astype(int)
    pred = np.asarray(prob) >= threshold
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    return {
        "confidence": confidence,
        "roc_auc": auc_interval(y, prob, confidence),
        "sensitivity": proportion_interval(int((pred & (y == 1)).sum()), pos, confidence),
        "specificity": proportion_interval(int((~pred & (y == 0)).sum()), neg, confidence),
    }
