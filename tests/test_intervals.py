"""The 95% intervals the evaluations, the model cards and bench/intervals.py give beside each figure
(trainer.metrics.intervals): checked against scipy's own binomial interval and, for ROC-AUC, by how often the interval
holds the true value of a known distribution."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap, norm
from sklearn.metrics import roc_auc_score

from trainer.metrics import auc_difference_interval, auc_interval, binary_metrics, intervals, proportion_interval


def test_the_binomial_interval_is_scipys_exact_one() -> None:
    for k, n in ((0, 10), (3, 10), (10, 10), (190, 211), (1, 1)):
        ci = binomtest(k, n).proportion_ci(0.95, "exact")
        assert proportion_interval(k, n) == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert proportion_interval(0, 0) is None


def _sample(rng: np.random.Generator, n_pos: int, n_neg: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    return y, np.r_[rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]


def test_the_auc_interval_holds_the_true_auc_about_95_times_in_100() -> None:
    # Two normal classes a distance d apart: the true ROC-AUC is Phi(d / sqrt(2)).
    shift = 2.0
    truth = float(norm.cdf(shift / np.sqrt(2)))
    rng = np.random.default_rng(7)
    trials, held, widths = 120, 0, []
    for i in range(trials):
        y, p = _sample(rng, 60, 90, shift)
        lo, hi = auc_interval(y, p, resamples=1000, seed=i)
        assert lo <= roc_auc_score(y, p) <= hi
        held += lo <= truth <= hi
        widths.append(hi - lo)
    # A 95% interval: 114 of 120 expected, binomial spread about 2.4; an interval half as wide would hold it about
    # 80 times. Its width near the normal approximation's (Hanley-McNeil 1982: 0.099 here).
    assert 105 <= held <= 119, held
    assert 0.06 < float(np.median(widths)) < 0.12
    # More images, a narrower interval.
    y, p = _sample(rng, 600, 900, shift)
    lo, hi = auc_interval(y, p)
    assert hi - lo < np.median(widths) / 2


def test_intervals_of_a_split_and_their_edge_cases() -> None:
    rng = np.random.default_rng(1)
    y, p = _sample(rng, 80, 120, 1.5)
    prob = 1 / (1 + np.exp(-p))
    m = binary_metrics(y, prob, 0.6)
    ci = intervals(y, prob, 0.6)
    assert ci["confidence"] == 0.95
    for name in ("roc_auc", "sensitivity", "specificity"):
        lo, hi = ci[name]
        assert lo < m[name] < hi, name
    (tp, fn), (fp, tn) = m["confusion_matrix"]
    assert ci["sensitivity"] == pytest.approx(list(binomtest(tp, tp + fn).proportion_ci(0.95, "exact")), abs=1e-9)
    assert ci["specificity"] == pytest.approx(list(binomtest(tn, tn + fp).proportion_ci(0.95, "exact")), abs=1e-9)
    # A perfect separation: every resample scores 1, so the interval is the point.
    assert auc_interval(np.r_[np.ones(20), np.zeros(30)], np.r_[np.ones(20), np.zeros(30)]) == [1.0, 1.0]
    # One class only: no ROC-AUC, so no interval, and no specificity either.
    one = intervals(np.ones(10), np.linspace(0, 1, 10), 0.5)
    assert one["roc_auc"] is None and one["specificity"] is None and one["sensitivity"] is not None


def test_the_paired_difference_and_the_benchs_verdicts() -> None:
    rng = np.random.default_rng(5)
    y, good = _sample(rng, 200, 300, 2.0)
    worse = good + rng.normal(0, 1.5, 500)  # the same images, scored with more noise
    difference = roc_auc_score(y, good) - roc_auc_score(y, worse)
    lo, hi = auc_difference_interval(y, good, worse)
    assert 0 < lo < difference < hi
    # Paired: narrower than the two models' own intervals would make it if they were measured on separate images.
    (a_lo, a_hi), (b_lo, b_hi) = auc_interval(y, good), auc_interval(y, worse)
    assert hi - lo < np.hypot(a_hi - a_lo, b_hi - b_lo)
    assert auc_difference_interval(y, good, good) == [0.0, 0.0]
    assert auc_difference_interval(np.ones(5), good[:5], worse[:5]) is None

    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "intervals.py"
    spec = importlib.util.spec_from_file_location("bench_intervals", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [bench.verdict(ci, 0.85) for ci in ([0.86, 0.9], [0.83, 0.887], [0.8, 0.84], None)] == [
        "met", "undecided", "missed", "n/a"]


def test_a_large_sample_takes_the_percentile_interval_close_to_bca() -> None:
    from trainer import metrics

    rng = np.random.default_rng(2)
    y, p = _sample(rng, 2600, 2600, 1.0)  # 5,200 images: over BCA_MAX
    assert len(y) > metrics.BCA_MAX
    lo, hi = auc_interval(y, p)
    assert lo < roc_auc_score(y, p) < hi
    bca = bootstrap((p[y == 1], p[y == 0]), metrics._auc, vectorized=True, n_resamples=2000,
                    rng=np.random.default_rng(0), batch=200).confidence_interval
    assert [lo, hi] == pytest.approx([bca.low, bca.high], abs=0.003)
