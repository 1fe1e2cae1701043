"""Fracture boxes teach the network where to look: read them, mask the boxed training images, weigh their loss.

`--boxes FILE` (a CSV of md5,x0,y0,x1,y1 relative to the image) names the boxes; the loss is -log of the share of
the last layer's class-activation map that falls on the cells a box covers, weighted by `--box-weight`. A training in
the product with a box weight gathers the boxes of its datasets' folders (collect_boxes: each one's boxes.csv).
"""

from __future__ import annotations

import argparse
import csv
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fracture.dataset_files import BOXES_FILE
from fracture.ml.preprocess import PreprocessSpec, content_boxes, crop_boxes, normalize
from trainer.dataset_scan import md5_file
from trainer.robustness import box_mask, peak_positions

if TYPE_CHECKING:
    from trainer.prepared_data import Prepared


class BoxesError(ValueError):
    """A boxes file cannot be read: the message names the file, the line and what is wrong."""


Box = tuple[float, float, float, float]


def read_boxes(path: str | Path, root: Path | None = None) -> dict[str, list[Box]]:
    """Fracture boxes by MD5 from a CSV with columns x0, y0, x1, y1 (fractions of the image's width and height,
    origin top left) and md5, or, given the folder `root` the images are under, a `filename` (a path under it or a
    file name found in it) whose bytes are hashed; BoxesError for a row that is not a box."""
    boxes: dict[str, list[Box]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if not {"x0", "y0", "x1", "y1"} <= columns or not ("md5" in columns or (root and "filename" in columns)):
            raise BoxesError(f"{path}: the columns must be x0, y0, x1, y1 and md5"
                             f"{' or filename' if root else ''}, not {', '.join(sorted(columns)) or 'none'}")
        found = _files_by_name(root) if root is not None and "filename" in columns else {}
        for line, r in enumerate(reader, start=2):
            box = _box(path, line, r)
            md5 = (r.get("md5") or "").strip().lower() or _md5_of(path, line, r.get("filename") or "", root, found)
            boxes.setdefault(md5, []).append(box)
    return boxes


def _box(path: str | Path, line: int, r: dict[str, str]) -> Box:
    try:
        x0, y0, x1, y1 = (float(r[k]) for k in ("x0", "y0", "x1", "y1"))
    except (TypeError, ValueError):
        raise BoxesError(f"{path}, line {line}: x0, y0, x1, y1 must be numbers") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise BoxesError(f"{path}, line {line}: a box is 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of "
                         f"the image's width and height), not {x0:g}, {y0:g}, {x1:g}, {y1:g}")
    return x0, y0, x1, y1


def _files_by_name(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for f in root.rglob("*"):
        if f.is_file():
            found.setdefault(f.name, []).append(f)
    return found


def _md5_of(path: str | Path, line: int, name: str, root: Path | None, found: dict[str, list[Path]]) -> str:
    if root is None or not name:
        raise BoxesError(f"{path}, line {line}: no md5{' and no filename' if root is not None else ''}")
    candidate = (root / name).resolve()
    if candidate.is_file() and candidate.is_relative_to(root.resolve()):
        return md5_file(candidate)
    files = found.get(Path(name).name, [])
    if len(files) != 1:
        raise BoxesError(f"{path}, line {line}: {'no' if not files else 'more than one'} image named {name!r} "
                         f"under {root}")
    return md5_file(files[0])


def collect_boxes(roots: list[Path], dest: Path) -> int:
    """Gather the fracture boxes of datasets' folders (each one's BOXES_FILE, if it has one) into one CSV of
    md5, x0, y0, x1, y1 at `dest`, as --boxes reads it; returns how many boxes (0: none of them has any)."""
    rows = []
    for root in roots:
        if (root / BOXES_FILE).is_file():
            for md5, bxs in read_boxes(root / BOXES_FILE, root).items():
                rows += [(md5, *b) for b in bxs]
    with open(dest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["md5", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)
    return len(rows)


def box_masks_of(path: str | Path, data: Prepared, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The box masks of the positive training and validation images that have boxes: (row -> mask index or -1,
    masks). Training teaches the train rows' (the batches hold no other); val's measure the epoch's pointing game."""
    boxes = read_boxes(path)
    index = torch.full((len(data.row_md5),), -1, dtype=torch.int64)
    masks: list[torch.Tensor] = []
    for r in np.concatenate([data.split_index["train"], data.split_index["val"]]).tolist():
        found = boxes.get(data.row_md5[r])
        if found and data.labels[r] == 1.0:
            index[r] = len(masks)
            masks.append(torch.from_numpy(box_mask(found, size).astype(np.uint8) * 255)[None])
    return index, torch.stack(masks) if masks else torch.zeros((0, 1, size, size), dtype=torch.uint8)


def box_weight_of(args: argparse.Namespace) -> float:
    """Weigh the box loss: --box-weight when --boxes names the boxes, else 0 (no box supervision)."""
    return args.box_weight if getattr(args, "boxes", None) else 0.0


# What the box loss asks of a boxed image's class-activation map (--box-loss).
BOX_LOSSES = ("share", "peak")
# Which of the map's cells count as a box's (--box-cells): every cell the box touches, or the cells whose peak, the
# map upsampled as the served heatmap is, lies in the box (what the pointing game scores).
BOX_CELLS = ("touched", "centres")


@functools.cache
def _cell_peaks(cells: int, size: int) -> torch.Tensor:
    return torch.from_numpy(peak_positions(cells, size))


def box_cells(masks: torch.Tensor, cells: int, which: str = "touched") -> torch.Tensor:
    """(N, cells * cells) 0/1: the cells of a cells x cells map that count as each mask's boxes. "centres" keeps
    the cells whose upsampled peak lies in a box: a 13-px box touches about 6 cells of an 8 x 8 map at 128 px but
    holds the peak of about 2, and a map that peaks on a touched cell outside the box misses the pointing game; an
    image whose boxes hold no cell's peak keeps the cells they touch."""
    touched = F.adaptive_max_pool2d((masks > 127).float(), cells).flatten(1)
    if which == "touched":
        return touched
    centres = (masks.flatten(1)[:, _cell_peaks(cells, masks.shape[-1]).to(masks.device)] > 127).float()
    return torch.where(centres.sum(1, keepdim=True) > 0, centres, touched)


def box_loss(cam: torch.Tensor, masks: torch.Tensor, kind: str = "share", which: str = "touched") -> torch.Tensor:
    """The box loss of a batch's maps, averaged over the images whose box survived the augmentation (0 when none
    did), on the cells `box_cells` counts as the boxes' (`which`). "share": -log of the share of each map (softmax
    over its cells) on those cells, which pulls the whole map onto the boxes. "peak": softplus of the highest cell
    outside them minus the highest inside, which asks only that the map peak in a box and leaves the rest of the
    map, whose mean is the logit, to the classification."""
    cells = box_cells(masks, cam.shape[-1], which)  # the map is square, as the input is
    keep = cells.sum(1) > 0
    if kind == "peak":  # a box over every cell leaves no peak outside it to compare
        keep &= cells.sum(1) < cells.shape[1]
    if not bool(keep.any()):
        return cam.sum() * 0.0
    flat, inside = cam.flatten(1)[keep].float(), cells[keep] > 0
    if kind == "peak":
        peak_in = flat.masked_fill(~inside, float("-inf")).amax(1)
        peak_out = flat.masked_fill(inside, float("-inf")).amax(1)
        return F.softplus(peak_out - peak_in).mean()
    share = (torch.softmax(flat, 1) * inside).sum(1)
    return -torch.log(share.clamp_min(1e-6)).mean()


def framed_masks(images: torch.Tensor, masks: torch.Tensor, spec: PreprocessSpec
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The frames normalize crops a trimming spec's images to (None otherwise), and the box masks cropped with them,
    so that a mask covers the same pixels of the network's input as of the image."""
    frames = content_boxes(images) if spec.framing == "trim" else None
    return frames, crop_boxes(masks, frames) if frames is not None else masks


def boxed_rows(data: Prepared, split: str) -> np.ndarray:
    """The rows of a split's fractured images that have fracture boxes (none without --boxes)."""
    rows = data.split_index[split]
    if data.box_index is None:
        return rows[:0]
    return rows[data.box_index[rows].numpy() >= 0]


@torch.no_grad()
def pointing_game(model: nn.Module, data: Prepared, rows: np.ndarray, spec: PreprocessSpec, device: torch.device,
                  chunk: int = 64) -> float:
    """The share of `rows` (boxed fractured images) whose class-activation map, one view, upsampled to the input
    as the served heatmap is, peaks inside a box: the epoch's pointing game on val (the served Grad-CAM of FracNet's
    last block is this map's positive part, so it peaks where this one does whenever it peaks above zero)."""
    model.eval()
    hits = 0
    for start in range(0, len(rows), chunk):
        batch = torch.from_numpy(rows[start:start + chunk])
        images = data.images[batch]
        frames, masks = framed_masks(images, data.box_masks[data.box_index[batch]], spec)  # type: ignore[index]
        _, cam = model.forward_cam(normalize(images.to(device), spec, frames))  # type: ignore[operator]  # FracNet
        up = F.interpolate(cam.float()[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)
        peaks = up.flatten(1).argmax(1).cpu()
        hits += int((masks.flatten(1)[torch.arange(len(batch)), peaks] > 127).sum())
    return hits / len(rows) if len(rows) else float("nan")
