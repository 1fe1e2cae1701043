"""Fracture boxes teach the network where to look: read them, mask the boxed training images, weigh their loss.

`--boxes FILE` (a CSV of md5,x0,y0,x1,y1 relative to the image) names the boxes; the loss is -log of the share of
the last layer's class-activation map that falls on the cells a box covers, weighted by `--box-weight`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from trainer.robustness import box_mask

if TYPE_CHECKING:
    from trainer.prepared_data import Prepared


def read_boxes(path: str | Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Fracture boxes by MD5 from a CSV with columns md5, x0, y0, x1, y1 (relative coordinates)."""
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            boxes.setdefault(r["md5"], []).append((float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])))
    return boxes


def box_masks_of(path: str | Path, data: Prepared, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The box masks of the positive training images that have boxes: (row -> mask index or -1, masks)."""
    boxes = read_boxes(path)
    index = torch.full((len(data.row_md5),), -1, dtype=torch.int64)
    masks: list[torch.Tensor] = []
    for r in data.split_index["train"].tolist():
        found = boxes.get(data.row_md5[r])
        if found and data.labels[r] == 1.0:
            index[r] = len(masks)
            masks.append(torch.from_numpy(box_mask(found, size).astype(np.uint8) * 255)[None])
    return index, torch.stack(masks) if masks else torch.zeros((0, 1, size, size), dtype=torch.uint8)


def box_weight_of(args: argparse.Namespace) -> float:
    """Weigh the box loss: --box-weight when --boxes names the boxes, else 0 (no box supervision)."""
    return args.box_weight if getattr(args, "boxes", None) else 0.0


def box_loss(cam: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """-log of the share of each map (softmax over its cells) on the cells its box mask covers, averaged over the
    images whose box survived the augmentation; 0 when none did."""
    cells = F.adaptive_max_pool2d((masks > 127).float(), cam.shape[-2:]).flatten(1)
    keep = cells.sum(1) > 0
    if not bool(keep.any()):
        return cam.sum() * 0.0
    share = (torch.softmax(cam.flatten(1)[keep].float(), 1) * cells[keep]).sum(1)
    return -torch.log(share.clamp_min(1e-6)).mean()
