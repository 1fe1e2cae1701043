"""Training plots as PNG files: loss and accuracy per epoch, ROC curves, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def curves(path: Path, history: dict[str, list[float]]) -> None:
    """Loss and accuracy per epoch for train and val, side by side (as the seed drew them)."""
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, history["train_loss"], label="train")
    a.plot(epochs, history["val_loss"], label="val")
    a.set(title="Loss", xlabel="epoch",
          ylabel="binary cross-entropy" + (" (train: + box loss)" if history.get("val_pointing") else ""))
    b.plot(epochs, history["train_acc"], label="train")
    b.plot(epochs, history["val_acc"], label="val")
    b.set(title="Accuracy (threshold 0.5)", xlabel="epoch", ylabel="accuracy")
    if history.get("val_pointing"):  # a run with fracture boxes: where its map points, on val's boxed images
        b.plot(epochs, history["val_pointing"], label="val pointing game")
        b.set(title="Accuracy (threshold 0.5); pointing game", ylabel="share")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def roc(path: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for split, (y, prob) in data.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, prob)
        ax.plot(fpr, tpr, label=f"{split} (AUC {metrics[split]['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(title="ROC (positive: fractured)", xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion(path: Path, metrics: dict[str, Any], names: list[str] | None = None) -> None:
    """One confusion matrix per split (or per entry of `names`, keys of `metrics`), side by side."""
    splits = names if names is not None else [s for s in ("train", "val", "test") if s in metrics]
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        cm = np.array(metrics[split]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < cm.max() / 2 else "white")
        ax.set_xticks([0, 1], ["fractured", "not fractured"])
        ax.set_yticks([0, 1], ["fractured", "not fractured"])
        ax.set(title=f"{split} (thr {metrics[split]['threshold']:.3f})", xlabel="predicted", ylabel="true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(folder: Path, history: dict[str, list[float]], data: dict[str, tuple[np.ndarray, np.ndarray]],
              metrics: dict[str, Any]) -> dict[str, Path]:
    """Write every plot of a run into `folder`; returns {name: file}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"curves": folder / "curves.png", "roc": folder / "roc.png", "confusion": folder / "confusion.png"}
    curves(files["curves"], history)
    roc(files["roc"], data, metrics)
    confusion(files["confusion"], metrics)
    return files
