"""The two validation ROC-AUCs of a training run, named the same way in the log, the run page, the card and /models.

A run measures val twice. Every epoch it scores one view of the training-time (EMA) network: cheap, and the figure
that picks the epoch (the selection figure). Once, at the end, it scores the network it registers through the
test-time views it is served with (the dihedral eight, averaged): the run's headline figure, the version's
`selection_metric`. The two differ; each is shown with what it measures.
"""

from __future__ import annotations

import math

SELECTION_MEASURES = "selection figure: one view of the training-time network, per epoch; it picks the epoch"


def served_measures(views: str | None) -> str:
    """What the headline val ROC-AUC measures, for a network served with `views` (None: not recorded)."""
    if views == "dihedral":
        seen = "its 8 test-time views (rotations and mirrorings) averaged"
    elif views == "identity":
        seen = "one view, as served"
    elif views == "two-mirrors":
        seen = "its 2 test-time views (two mirrorings) averaged"
    else:
        seen = "its test-time views"
    return f"the served network on val, {seen}; threshold-free"


def served_text(auc: float | None, views: str | None) -> str:
    """'val ROC-AUC 0.4375 (the served network on val, ...)', the run's and the version's headline figure."""
    return f"val ROC-AUC {_figure(auc)} ({served_measures(views)})"


def selection_text(auc: float | None) -> str:
    """'selection val ROC-AUC 0.5938 (one view ...)', the per-epoch figure."""
    return f"selection val ROC-AUC {_figure(auc)} ({SELECTION_MEASURES})"


def _figure(auc: float | None) -> str:
    return "n/a" if auc is None or math.isnan(auc) else f"{auc:.4f}"
