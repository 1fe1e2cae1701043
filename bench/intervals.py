"""How sure are issue 18's figures? Each model's unchanged figures on the two sources' held-out images with their 95%
intervals, whether each target is met, missed or undecided at that sample size, and paired differences between
models on the same images.

    .venv/bin/python scripts/two_sources.py /tmp/two
    .venv/bin/python bench/intervals.py --two /tmp/two \
        --model fracture/release/two-site-12/model.pt --name two-site-12 \
        --model fracture/release/two-site-160/model.pt --name two-site-8 [--markdown OUT.md] [--json OUT.json]

The images: the first source's distinct images that every model held out (its grouped test split; the same 521 for
models trained on two-site-8's split; `--first-of` as bench/robustness.py's) and the second site's 698 locked images
(never trained on), decoded as the workers decode them, each served by the model as `fracture classify` serves it
(its test-time views, its threshold). Intervals (trainer.metrics): ROC-AUC's stratified bootstrap (BCa, 2000
resamples), sensitivity's and specificity's exact binomial (Clopper-Pearson), the pointing game's the same on its
hits among the boxed fractured images. A target is "met" when the interval's low end clears it, "missed" when the
high end is below it, else "undecided": a test set of this size cannot tell. Differences: the first model's ROC-AUC
minus each other's on the same images, a paired bootstrap (images resampled with both models' scores; BCa, 2000
resamples): an interval that excludes 0 is a difference the images show. `--mix`: the first model's logits averaged
with each other's, a reference for what the measured models hold together. `--changes`: the first model's rows of the
audit on the first source, each with its intervals among the images not flagged, and the per-change target's
verdict.

About 2 min per model at 160 px on 2 cores (BENCH_THREADS threads): about 1 min to find its held-out images
(its training data split again), 1 min to serve both sources' images and draw the locked fractured ones' heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import REPO, common_held_out, first_held_out, load_gray, site_locked  # noqa: E402

sys.path.insert(0, str(REPO))
from fracture.ml.inference import Predictor  # noqa: E402
from trainer.acquisition import AUDIT  # noqa: E402
from trainer.metrics import auc_difference_interval, binary_metrics, intervals, proportion_interval  # noqa: E402
from trainer.robustness import _scores, acquisition_audit, heatmap_audit  # noqa: E402

# Issue 18's targets on unchanged images: (source, figure, floor).
TARGETS = (("first", "roc_auc", 0.995), ("first", "sensitivity", 0.96), ("first", "specificity", 0.96),
           ("site", "roc_auc", 0.85), ("site", "pointing_game", 0.6))
SOURCES = {"first": "first source, held out by every model", "site": "second source, locked part"}


def verdict(ci: list[float] | None, floor: float) -> str:
    """'met' when the interval clears the floor, 'missed' when it lies below it, else 'undecided'."""
    if ci is None:
        return "n/a"
    return "met" if ci[0] >= floor else "missed" if ci[1] < floor else "undecided"


Decoded = tuple[list[Image.Image], np.ndarray, list[Any]]  # images, labels, fracture boxes (site only)


def decode(paths: list[Path], y: np.ndarray, boxes: list[Any] | None = None) -> Decoded:
    """The images the workers can decode, once for every model, with their labels and boxes."""
    keep = [(im, i) for i, p in enumerate(paths) if (im := load_gray(p)) is not None]
    return ([im for im, _ in keep], y[[i for _, i in keep]],
            [boxes[i] for _, i in keep] if boxes is not None else [[] for _ in keep])


def measure(model: Path, sources: dict[str, Decoded]) -> dict[str, Any]:
    """The model's served probabilities and figures with intervals on both sources, and its pointing game."""
    t0 = time.time()
    predictor = Predictor.from_file(model, device=torch.device("cpu"))
    threshold = predictor.ckpt.threshold
    out: dict[str, Any] = {"model": str(model), "threshold": threshold, "sources": {}}
    for source, (images, y, boxes) in sources.items():
        prob, _ = _scores(predictor, images, AUDIT[0])
        figures = binary_metrics(y, prob, threshold)
        entry: dict[str, Any] = {k: figures[k] for k in ("n", "roc_auc", "sensitivity", "specificity")}
        entry["intervals"] = intervals(y, prob, threshold)
        entry["prob"], entry["y"] = prob.tolist(), y.tolist()
        boxed = [i for i, b in enumerate(boxes) if y[i] == 1 and b]
        if boxed:
            heat = heatmap_audit(predictor, [images[i] for i in boxed], [boxes[i] for i in boxed])
            hits = round(heat["pointing_game"] * heat["n"])
            entry["pointing_game"] = heat["pointing_game"]
            entry["intervals"]["pointing_game"] = proportion_interval(hits, heat["n"])
            entry["pointing_n"] = heat["n"]
        out["sources"][source] = entry
    out["seconds"] = round(time.time() - t0, 1)
    print(f"{model}: {out['seconds']} s", file=sys.stderr)
    return out


def change_table(name: str, rows: list[dict[str, Any]]) -> str:
    """trainer.robustness.acquisition_audit's rows: each change's figures among the images not flagged (all of them
    without a detector), with their intervals, and whether the per-change target (ROC-AUC >= 0.98, sensitivity and
    specificity >= 0.95, at most 20% flagged) is met, missed or undecided."""
    lines = [f"| {name}, first source: change | flagged | n not flagged | ROC-AUC (95% interval) | sensitivity | "
             "specificity | per-change target |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        flagged, r = row["flagged"] or 0.0, row["kept"] if row["flagged"] is not None else row
        if r is None:  # every image flagged
            lines.append(f"| {row['change']} | 100% | 0 | | | | missed |")
            continue
        ci = r["intervals"]
        marks = [verdict(ci[k], floor) for k, floor in (("roc_auc", 0.98), ("sensitivity", 0.95),
                                                        ("specificity", 0.95))]
        overall = ("missed" if "missed" in marks or flagged > 0.2 else "met" if set(marks) == {"met"}
                   else "undecided")
        lines.append(f"| {row['change']} | {100 * flagged:.0f}% | {r['n']} | {_ci(r['roc_auc'], ci['roc_auc'])} | "
                     f"{_ci(r['sensitivity'], ci['sensitivity'])} | {_ci(r['specificity'], ci['specificity'])} | "
                     f"{overall} |")
    return "\n".join(lines)


def mixes(report: dict[str, Any], weights: tuple[float, ...] = (0.25, 0.5, 0.75)) -> dict[str, dict[str, float]]:
    """What the measured models could give together: the first model's logit averaged with each other's at
    `weights` (the first's share), ROC-AUC on each source (an ensemble of outputs, serving both networks: an upper
    reference for what one network distilled or blended from them could score, not a model the product serves)."""
    names = list(report["models"])
    out = {}
    for other in names[1:]:
        for w in weights:
            figures = {}
            for source in SOURCES:
                a, b = report["models"][names[0]]["sources"][source], report["models"][other]["sources"][source]
                figures[source] = float(roc_auc_score(a["y"], w * _logit(a["prob"]) + (1 - w) * _logit(b["prob"])))
            out[f"{w:g} {names[0]} + {1 - w:g} {other}"] = figures
    return out


def _logit(prob: list[float]) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _ci(v: float, ci: list[float] | None) -> str:
    return f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{v:.3f}"


def tables(report: dict[str, Any]) -> str:
    """The figures with their intervals and each target's verdict; then the paired differences."""
    labels = report.get("labels", SOURCES)
    lines = ["| model | images | n | ROC-AUC (95% interval) | sensitivity | specificity | pointing game | targets: "
             "met / undecided / missed |", "|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        for source, e in m["sources"].items():
            ci = e["intervals"]
            marks = ([f"{fig} {verdict(ci.get(fig), floor)}" for src, fig, floor in TARGETS if src == source]
                     if labels[source] == SOURCES[source] else ["training fit: the targets are for unseen images"])
            point = _ci(e["pointing_game"], ci["pointing_game"]) if "pointing_game" in e else ""
            lines.append(f"| {name} | {labels[source]} | {e['n']} | {_ci(e['roc_auc'], ci['roc_auc'])} | "
                         f"{_ci(e['sensitivity'], ci['sensitivity'])} | {_ci(e['specificity'], ci['specificity'])} | "
                         f"{point} | {'; '.join(marks)} |")
    if report.get("mixes"):
        lines += ["", "| logits averaged, same images | " + " | ".join(f"ROC-AUC, {v}" for v in labels.values())
                  + " |", "|---|---|---|"]
        for mix, figures in report["mixes"].items():
            lines.append(f"| {mix} | " + " | ".join(f"{figures[s]:.4f}" for s in SOURCES) + " |")
    if report.get("differences"):
        lines += ["", "| ROC-AUC difference, same images (95% interval) | " + " | ".join(labels.values()) + " |",
                  "|---|---|---|"]
        for pair, d in report["differences"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{d[s]['difference']:+.4f} ({d[s]['interval'][0]:+.4f} to "
                                                       f"{d[s]['interval'][1]:+.4f})" for s in SOURCES) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--two", type=Path, required=True, help="the folder scripts/two_sources.py wrote")
    p.add_argument("--model", action="append", type=Path, required=True, help="checkpoint (repeatable)")
    p.add_argument("--name", action="append", help="a name per --model for the tables")
    p.add_argument("--first-of", type=Path, default=None,
                   help="for a model trained on none of the first source: the checkpoint it was fine-tuned from")
    p.add_argument("--first-split", choices=("test", "train"), default="test",
                   help="the first source's images: the test split every model held out, or the training images "
                        "every model trained on (their training fit)")
    p.add_argument("--mix", nargs="?", const="0.25,0.5,0.75", default=None, metavar="SHARES",
                   help="also the first model's logits averaged with each other's, at these shares of the first's "
                        "(comma-separated; default 0.25,0.5,0.75)")
    p.add_argument("--changes", action="store_true",
                   help="also the first model's per-change rows on the first source with intervals (about 5 min)")
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    names = a.name or [m.parent.name for m in a.model]
    if len(names) != len(a.model):
        p.error("give one --name per --model")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    first = common_held_out(first_held_out(a.model, a.two, init=a.first_of, split=a.first_split))
    sources = {"first": decode([p for p, _ in first], np.array([lab for _, lab in first])),
               "site": decode(*site_locked(a.two))}
    report: dict[str, Any] = {"models": {n: measure(m, sources) for n, m in zip(names, a.model, strict=True)},
                              "labels": SOURCES | ({"first": "first source, trained on by every model"}
                                                   if a.first_split == "train" else {})}
    base = names[0]
    report["differences"] = {}
    for other in names[1:]:
        d = {}
        for source in SOURCES:
            x, y = report["models"][base]["sources"][source], report["models"][other]["sources"][source]
            assert x["y"] == y["y"], "the same images in the same order"
            yy, pa, pb = np.array(x["y"]), np.array(x["prob"]), np.array(y["prob"])
            d[source] = {"difference": float(roc_auc_score(yy, pa) - roc_auc_score(yy, pb)),
                         "interval": auc_difference_interval(yy, pa, pb)}
        report["differences"][f"{base} - {other}"] = d
    if a.mix:
        report["mixes"] = mixes(report, tuple(float(w) for w in a.mix.split(",")))
    text = tables(report)
    if a.changes:
        images, y, _ = sources["first"]
        report["changes"] = acquisition_audit(Predictor.from_file(a.model[0], device=torch.device("cpu")), images, y)
        text += "\n\n" + change_table(names[0], report["changes"])
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
