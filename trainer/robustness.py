"""The robustness and shortcut audit of a served model: its figures under another department's acquisition changes,
and where its heatmap points.

Plain functions that bench/robustness.py, the trainer's model card and evaluations (`"audit": true`) call:
- `acquisition_audit`: for each change of trainer.acquisition.AUDIT, the images changed, squashed to the network's
  input as serving does, and classified by the served predictor (its views, threshold and detector): ROC-AUC,
  sensitivity, specificity, the share flagged unlike the training data, and the same three figures among the
  images it does not flag;
- `heatmap_audit`: on fractured images with fracture boxes, the share of the Grad-CAM map's mass inside the boxes
  and in the image's outer tenth (each beside the share of the area it covers: what a map blind to the image would
  score), and the pointing game (the map's maximum inside a box) beside its reach: the share of images where a map
  of the network's cells could point into a box at all (a bilinearly upsampled map peaks only at a cell's centre, so
  a 4x4 map of a 128-px input cannot hit a 13-px box whose square holds no centre).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fracture.ml.gradcam import heatmap
from fracture.ml.inference import Predictor
from fracture.ml.net import FracNet
from fracture.ml.preprocess import content_boxes, fit_input, to_uint8_tensor, uncrop_boxes
from trainer.acquisition import AUDIT, AuditChange
from trainer.metrics import binary_metrics, intervals, json_safe

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the width and height
BORDER = 0.1  # the outer tenth of each side: where framing, collimation and markers are


def _scores(predictor: Predictor, images: Sequence[Image.Image], change: AuditChange,
            batch: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    probs, oods = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        u8 = torch.stack([to_uint8_tensor(fit_input(change.change(im) if change.change else im, predictor.spec))
                          for im in chunk])
        p, o = predictor.scores(u8)
        probs.append(p)
        if o is not None:
            oods.append(o)
    return np.concatenate(probs), (np.concatenate(oods) if oods else None)


def _figures(y: np.ndarray, prob: np.ndarray, threshold: float, with_intervals: bool = False) -> dict[str, Any]:
    m = json_safe(binary_metrics(y, prob, threshold))
    figures = {k: m[k] for k in ("n", "roc_auc", "sensitivity", "specificity")}
    return figures | ({"intervals": intervals(y, prob, threshold)} if with_intervals else {})


def acquisition_audit(predictor: Predictor, images: Sequence[Image.Image], labels: np.ndarray,
                      changes: Sequence[AuditChange] = AUDIT) -> list[dict[str, Any]]:
    """One row per change: {"change", "group", "n", "roc_auc", "sensitivity", "specificity", "flagged",
    "kept": the same figures among the images not flagged (None without a detector)}. The figures a target reads
    (those not flagged, or all of them without a detector) carry their 95% intervals (trainer.metrics.intervals)."""
    threshold = predictor.ckpt.threshold
    rows = []
    for change in changes:
        prob, ood = _scores(predictor, images, change)
        row: dict[str, Any] = {"change": change.name, "group": change.group,
                               **_figures(labels, prob, threshold, with_intervals=ood is None),
                               "flagged": None, "kept": None}
        if ood is not None:
            keep = ood < 1
            row["flagged"] = float(np.mean(~keep))
            row["kept"] = _figures(labels[keep], prob[keep], threshold, with_intervals=True) if keep.any() else None
        rows.append(row)
    return rows


def box_mask(boxes: Sequence[Box], size: int) -> np.ndarray:
    """A (size, size) boolean mask of the boxes on the network's square input (the image squashed to it)."""
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = math.floor(x0 * size), math.floor(y0 * size)
        c1, r1 = max(c0 + 1, math.ceil(x1 * size)), max(r0 + 1, math.ceil(y1 * size))
        mask[r0:r1, c0:c1] = True
    return mask


def border_mask(size: int, frac: float = BORDER) -> np.ndarray:
    band = max(1, round(size * frac))
    mask = np.ones((size, size), dtype=bool)
    mask[band:size - band, band:size - band] = False
    return mask


def map_cells(predictor: Predictor) -> int | None:
    """The cells per side of the served FracNet's heatmap before upsampling (None for another network)."""
    if not isinstance(predictor.model, FracNet):
        return None
    return predictor.spec.image_size // predictor.ckpt.args.output_stride


@functools.lru_cache(maxsize=4)
def _upsampled_cells(cells: int, size: int) -> torch.Tensor:
    """One map per cell of a cells x cells grid, that cell alone lit, upsampled to size x size as the heatmap is
    (the same for every image of an audit: made once)."""
    one_hot = torch.eye(cells * cells).view(-1, 1, cells, cells)
    return F.interpolate(one_hot, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def peak_positions(cells: int, size: int, frame: torch.Tensor | None = None) -> np.ndarray:
    """The flat positions (in a size x size map) where the maximum of a cells x cells map, upsampled as the served
    heatmap is (and shrunk into the image's `frame` when the spec trims it), can fall: one per cell."""
    up = _upsampled_cells(cells, size)
    if frame is not None:
        up = uncrop_boxes(up, frame.view(1, 4).repeat(len(up), 1))
    return up.flatten(1).argmax(1).numpy()


def heatmap_audit(predictor: Predictor, images: Sequence[Image.Image],
                  boxes: Sequence[Sequence[Box]]) -> dict[str, Any]:
    """Where the served heatmap of fractured images falls, against their fracture boxes: mean shares of the map's
    mass inside the boxes and in the outer tenth, the areas those cover, the pointing game's hit rate, and its
    reach (the share of images where the map's cells could point into a box at all; None for another network)."""
    size = predictor.spec.image_size
    border = border_mask(size)
    cells = map_cells(predictor)
    in_box, box_area, in_border, hits, blank, reach = [], [], [], [], 0, []
    for im, bxs in zip(images, boxes, strict=True):
        u8 = to_uint8_tensor(fit_input(im, predictor.spec))
        heat = heatmap(predictor.model, u8, predictor.spec, predictor.device)
        mask = box_mask(bxs, size)
        if cells is not None:
            frame = content_boxes(u8[None])[0] if predictor.spec.framing == "trim" else None
            reach.append(bool(mask.flat[peak_positions(cells, size, frame)].any()))
        total = float(heat.sum())
        box_area.append(float(mask.mean()))
        if total <= 0:  # no positive evidence anywhere: the map points nowhere
            blank += 1
            in_box.append(0.0)
            in_border.append(0.0)
            hits.append(False)
            continue
        in_box.append(float(heat[mask].sum()) / total)
        in_border.append(float(heat[border].sum()) / total)
        hits.append(bool(mask.flat[int(np.argmax(heat))]))
    n = len(in_box)
    return {"n": n, "box_mass": _mean(in_box), "box_area": _mean(box_area), "border_mass": _mean(in_border),
            "border_area": float(border.mean()), "pointing_game": _mean(hits), "pointing_chance": _mean(box_area),
            "pointing_reach": _mean(reach), "map_cells": cells, "empty_maps": blank}


def _mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def render_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table rows (no header) of an acquisition audit."""
    out = []
    for r in rows:
        kept = r.get("kept") or {}
        out.append(f"| {r['change']} | {r['n']} | {_f(r['roc_auc'])} | {_f(r['sensitivity'])} | "
                   f"{_f(r['specificity'])} | {_pct(r['flagged'])} | {_f(kept.get('roc_auc'))} | "
                   f"{_f(kept.get('sensitivity'))} | {_f(kept.get('specificity'))} |")
    return out


AUDIT_HEADER = ["| change | n | ROC-AUC | sensitivity | specificity | flagged | ROC-AUC, not flagged | "
                "sensitivity, not flagged | specificity, not flagged |", "|---|---|---|---|---|---|---|---|---|"]


def render(rows: list[dict[str, Any]]) -> str:
    """An acquisition audit as a Markdown table."""
    return "\n".join(AUDIT_HEADER + render_rows(rows))


def worst(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The audit's weakest figures over the changes, among the images not flagged (all of them without a detector):
    what a target checks. A change that leaves under a tenth of the images unflagged counts in "flagged" only:
    figures on a handful of images are noise."""
    def figures(r: dict[str, Any]) -> dict[str, Any] | None:
        if r.get("flagged") is None:
            return r
        kept = r.get("kept")
        return kept if kept is not None and kept["n"] >= 0.1 * r["n"] else None

    def low(key: str) -> float | None:
        vals = [f[key] for r in rows if (f := figures(r)) is not None and f.get(key) is not None]
        return min(vals) if vals else None

    flagged = [r["flagged"] for r in rows if r.get("flagged") is not None]
    return {"roc_auc": low("roc_auc"), "sensitivity": low("sensitivity"), "specificity": low("specificity"),
            "flagged": max(flagged) if flagged else None}


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.0f}%"
