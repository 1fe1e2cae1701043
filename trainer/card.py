"""The model card: what was trained on what, how, and how well, as Markdown and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fracture import val_auc
from fracture.audit_text import duplicates_sentence
from trainer.robustness import render as robustness_table

ROWS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "threshold", "n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _interval(split: dict[str, Any], name: str) -> str:
    """A figure's interval from trainer.metrics.intervals, as "low-high" (blank where there is none)."""
    ci = (split.get("intervals") or {}).get(name)
    return f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else ""


def _selected(curve: list[float], epoch: Any) -> float | None:
    """The per-epoch figure at the selected epoch (1-based), if the curve has it."""
    return float(curve[epoch - 1]) if isinstance(epoch, int) and 0 < epoch <= len(curve) else None


def metrics_table(metrics: dict[str, Any], title: str = "") -> str:
    splits = [s for s in ("train", "val", "test") if s in metrics]
    lines = [f"| {title or 'metric'} | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(_fmt(metrics[s][row]) for s in splits) + " |")
    lines.append("| confusion [[TP, FN], [FP, TN]] | " + " | ".join(str(metrics[s]["confusion_matrix"])
                                                            for s in splits) + " |")
    for row in ("roc_auc", "sensitivity", "specificity"):
        if any(metrics[s].get("intervals") for s in splits):
            lines.append(f"| {row}, 95% interval | " + " | ".join(_interval(metrics[s], row) for s in splits) + " |")
    if any("ood_flagged" in metrics[s] for s in splits):
        lines.append("| flagged out of distribution | " + " | ".join(_fmt(metrics[s].get("ood_flagged", float("nan")))
                                                                    for s in splits) + " |")
    return "\n".join(lines)


def seeds_table(seeds: list[dict[str, Any]], split: str = "test") -> str:
    """The spread of a recipe over training seeds: each seed's figures on `split`, then min / median / max."""
    keys = ("roc_auc", "sensitivity", "specificity", "ood_flagged")
    lines = ["| seed | threshold | ROC-AUC | sensitivity | specificity | flagged out of distribution |",
             "|---|---|---|---|---|---|"]
    for seed in seeds:
        m = seed["metrics"][split]
        lines.append(f"| {seed['seed']} | {seed['threshold']:.4f} | " + " | ".join(_fmt(m.get(k, float("nan")))
                                                                         for k in keys) + " |")
    for name, pick in (("min", min), ("median", _median), ("max", max)):
        values = [pick([s["metrics"][split].get(k, float("nan")) for s in seeds]) for k in keys]
        lines.append(f"| **{name}** | | " + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(lines)


# Why a reviewed correction was left out of training, in the order prepare_data counts them.
LEFT_OUT_REASONS = (("already_in_data", "already in the data"),
                    ("locked", "held by a locked evaluation dataset"),
                    ("undecodable", "undecodable"),
                    ("near_val_test", "a duplicate of a val/test image"))


def left_out_reasons(corrections: dict[str, int]) -> str:
    """'1 already in the data, 1 a duplicate of a val/test image': why corrections were left out."""
    parts = [f"{corrections[key]} {why}" for key, why in LEFT_OUT_REASONS if corrections.get(key)]
    unexplained = corrections.get("left_out", 0) - sum(corrections.get(key, 0) for key, _ in LEFT_OUT_REASONS)
    if unexplained > 0:
        parts.append(f"{unexplained} for a reason not recorded")
    return ", ".join(parts)


def corrections_text(corrections: dict[str, int]) -> str:
    """'reviewed corrections trained on: 3 of 4 (1 left out: 1 already in the data)', the log's data line."""
    text = f"reviewed corrections trained on: {corrections.get('used', 0)} of {corrections.get('offered', 0)}"
    left = corrections.get("left_out", 0)
    return f"{text} ({left} left out: {left_out_reasons(corrections)})" if left else text


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write(out: Path, summary: dict[str, Any], compare: dict[str, Any] | None = None) -> None:
    """Write model_card.md and model_card.json into the run folder `out`."""
    m = summary["metrics"]
    audit = summary["audit"]
    epoch_s = summary["history"]["epoch_s"]  # summed over every run of a resumed training
    locked = summary.get("locked_out", {})
    corrections = summary.get("corrections", {})
    md = [
        "# Model card: fracture CNN",
        "",
        f"- Architecture: `{summary['model_args']['arch']}` {summary['model_args']}",
        f"- Input: {summary['preprocess']}",
        "- Test-time views: " + _views_text(summary["preprocess"].get("views")),
        f"- Split policy: **{m['split_policy']}**; split sizes (distinct images): {summary['split_sizes']}",
        *([f"- Headline: **{val_auc.served_text(m['val']['roc_auc'], summary['preprocess'].get('views'))}**, "
           "the figure the run page and /models show; the "
           + val_auc.selection_text(_selected(summary['history'].get('val_auc', []), m.get('selected_epoch')))
           + " at the selected epoch"] if "val" in m else []),
        f"- Selected epoch (best {m.get('selected_on', 'val ROC-AUC')}): {m['selected_epoch']}; decision threshold "
        f"(chosen on {m.get('threshold_on', 'val')}): "
        f"{summary['threshold']:.4f}: the score at which the one-sided 95% lower confidence bounds of sensitivity "
        "and specificity clear the floors 0.96 and 0.95 by the most (trainer.metrics.choose_threshold)",
        "- Out-of-distribution detector: " + ("class-conditional Mahalanobis distance on the mean and standard "
                                              "deviation of every residual block's feature maps (fracture.ml.ood), "
                                              "fitted on train; its threshold flags at most 5% of val (split "
                                              "conformal). The share each split gets flagged is the last row below."
                                              if "ood_flagged" in m.get("val", {}) else "none"),
        f"- Data fingerprint: `{summary['data_fingerprint']}`",
        "- Datasets (files): " + ", ".join(f"{name} ({n})" for name, n in summary.get("datasets", {}).items()),
        f"- Left out because a locked evaluation dataset holds them: {locked.get('total', 0)} distinct images "
        f"({locked.get('exact', 0)} with the same bytes, {locked.get('near', 0)} near duplicates)",
        *([f"- Reviewed corrections trained on: {corrections['used']} of the {corrections['offered']} reviewed "
           f"images added to the datasets ({corrections['relabelled']} with a label other than the model's "
           f"prediction; " + (f"{corrections['left_out']} left out: {left_out_reasons(corrections)}"
                              if corrections.get("left_out") else "none left out")
           + "); they are trained on, never validated or tested on"]
          if corrections else []),
        f"- Checkpoint SHA-256: `{summary['sha256']}`",
        f"- Trained on {summary['device']}: {len(epoch_s)} epochs in {sum(epoch_s) / 60:.1f} min, "
        f"mean epoch {sum(epoch_s) / max(len(epoch_s), 1):.1f} s",
        f"- Command: `{summary['command']}`",
        "",
        "## Figures per split (positive class: fractured)",
        "",
        metrics_table(m, m["split_policy"]),
        "",
        *(["The 95% interval rows: how far a figure could move on another sample of the split's size; ROC-AUC's "
           "from a stratified bootstrap (BCa, 2000 resamples), sensitivity's and specificity's exact binomial "
           "(Clopper-Pearson; trainer.metrics.intervals).", ""] if m.get("test", {}).get("intervals") else []),
    ]
    robustness = m.get("robustness")
    if robustness:
        sample = (f" ({robustness['sampled']} of its {robustness['of']} images, a seeded sample)"
                  if robustness.get("sampled", 0) < robustness.get("of", 0) else "")
        md += ["## Robustness audit (test split)", "",
               f"The served model on its grouped test split{sample} with each image changed as another department's "
               f"X-ray system or export changes images (trainer.acquisition; applied here at "
               f"{robustness.get('at', 'input size')}, by bench/robustness.py at full resolution). 'Not "
               "flagged': the images the out-of-distribution detector lets through, the ones whose predictions a "
               "reader would rely on.", "",
               robustness_table(robustness["rows"]), ""]
    if summary.get("seeds"):
        md += ["## The same recipe over training seeds (same data and split, grouped test)", "",
               seeds_table(summary["seeds"]), ""]
    if summary.get("external"):
        md += ["## External validation", "", summary["external"], ""]
    if compare:
        md += [f"## The same recipe with `--split {compare['metrics']['split_policy']}`", "",
               f"Command: `{compare.get('command', '?')}`; split sizes (distinct images): "
               f"{compare.get('split_sizes', '?')}. Under `given`, val and test are mostly copies of train "
               "images, so its val/test figures overstate quality; the grouped figures above are the honest ones.",
               "", metrics_table(compare["metrics"], compare["metrics"]["split_policy"]), ""]
    md += [
        "## Data audit",
        "",
        f"- {duplicates_sentence(audit)}",
        f"- Files with a byte-identical twin in another split: {audit['exact_duplicates_across_splits']}",
        f"- Files with a near-duplicate in another split: {audit['near_duplicates_across_splits']}",
        f"- Undecodable files: {len(audit['undecodable'])}",
        "",
        "## Plots",
        "",
    ]
    md += [f"![{name}](plots/{Path(p).name})" for name, p in summary["plots"].items()]
    (out / "model_card.md").write_text("\n".join(md) + "\n")
    data = {k: v for k, v in summary.items() if k != "audit"} | {"audit": audit}
    if compare:
        data["compare"] = {"split_policy": compare["metrics"]["split_policy"], "metrics": compare["metrics"],
                           "command": compare.get("command"), "split_sizes": compare.get("split_sizes")}
    (out / "model_card.json").write_text(json.dumps(data, indent=2, default=str))


def _views_text(views: str | None) -> str:
    """What the card says of the served test-time views."""
    if views == "dihedral":
        return ("**dihedral**: logits averaged over the 8 rotations and mirrorings, so a rotated or mirrored upload "
                "gets the same answer; the epoch is selected on one view, the threshold and every figure below on the "
                "served views")
    if views == "two-mirrors":
        return ("**two-mirrors**: logits averaged over the left-right mirror and the anti-diagonal mirror (2 of the "
                "8 rotations and mirrorings; a rotated or mirrored upload may get another answer); the epoch is "
                "selected on one view, the threshold and every figure below on the served views")
    return "one (identity)"
