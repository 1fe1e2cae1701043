"""The model card: what was trained on what, how, and how well, as Markdown and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ROWS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "threshold", "n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_table(metrics: dict[str, Any], title: str = "") -> str:
    splits = [s for s in ("train", "val", "test") if s in metrics]
    lines = [f"| {title or 'metric'} | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(_fmt(metrics[s][row]) for s in splits) + " |")
    lines.append("| confusion [[TP, FN], [FP, TN]] | " + " | ".join(str(metrics[s]["confusion_matrix"])
                                                            for s in splits) + " |")
    return "\n".join(lines)


def write(out: Path, summary: dict[str, Any], compare: dict[str, Any] | None = None) -> None:
    """Write model_card.md and model_card.json into the run folder `out`."""
    m = summary["metrics"]
    audit = summary["audit"]
    epoch_s = summary["history"]["epoch_s"]  # summed over every run of a resumed training
    locked = summary.get("locked_out", {})
    md = [
        "# Model card: fracture CNN",
        "",
        f"- Architecture: `{summary['model_args']['arch']}` {summary['model_args']}",
        f"- Input: {summary['preprocess']}",
        "- Test-time views: " + ("**dihedral**: logits averaged over the 8 rotations and mirrorings, so a rotated "
                                 "or mirrored upload gets the same answer; the epoch is selected on one view, the "
                                 "threshold and every figure below on the served views"
                                 if summary["preprocess"].get("views") == "dihedral" else "one (identity)"),
        f"- Split policy: **{m['split_policy']}**; split sizes (distinct images): {summary['split_sizes']}",
        f"- Selected epoch (best val ROC-AUC): {m['selected_epoch']}; decision threshold (chosen on val): "
        f"{summary['threshold']:.4f}",
        f"- Data fingerprint: `{summary['data_fingerprint']}`",
        "- Datasets (files): " + ", ".join(f"{name} ({n})" for name, n in summary.get("datasets", {}).items()),
        f"- Left out because a locked evaluation dataset holds them: {locked.get('total', 0)} distinct images "
        f"({locked.get('exact', 0)} with the same bytes, {locked.get('near', 0)} near duplicates)",
        f"- Checkpoint SHA-256: `{summary['sha256']}`",
        f"- Trained on {summary['device']}: {len(epoch_s)} epochs in {sum(epoch_s) / 60:.1f} min, "
        f"mean epoch {sum(epoch_s) / max(len(epoch_s), 1):.1f} s",
        f"- Command: `{summary['command']}`",
        "",
        "## Figures per split (positive class: fractured)",
        "",
        metrics_table(m, m["split_policy"]),
        "",
    ]
    if compare:
        md += [f"## The same recipe with `--split {compare['metrics']['split_policy']}`", "",
               f"Command: `{compare.get('command', '?')}`; split sizes (distinct images): "
               f"{compare.get('split_sizes', '?')}. Under `given`, val and test are mostly copies of train "
               "images, so its val/test figures overstate quality; the grouped figures above are the honest ones.",
               "", metrics_table(compare["metrics"], compare["metrics"]["split_policy"]), ""]
    md += [
        "## Data audit",
        "",
        f"- Files {audit['files']}, distinct images {audit['distinct_images']}, "
        f"duplicate groups {audit['duplicate_groups']}",
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
        data["compare"] = {"split_policy": compare["metrics"]["split_policy"], "metrics": compare["metrics"]}
    (out / "model_card.json").write_text(json.dumps(data, indent=2, default=str))
