"""Binary classification metrics per split, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


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


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, min_sensitivity: float = 0.97) -> float:
    """The threshold with the best specificity among those reaching `min_sensitivity` on val.

    Missing a fracture costs more than a second look, so sensitivity is held first; where no
    threshold reaches it, fall back to the one maximising Youden's J (sensitivity + specificity).
    """
    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), prob)
    thr = np.clip(thr, 0.0, 1.0)
    ok = np.nonzero(tpr >= min_sensitivity)[0]
    best = ok[np.argmin(fpr[ok])] if len(ok) else int(np.argmax(tpr - fpr))
    return float(thr[best])
