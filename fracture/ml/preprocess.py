"""Decode and preprocess X-rays the same way for training and serving, so serving never drifts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from fracture.decode import (  # noqa: F401  (re-exported: the decoding every caller shares)
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    THUMBNAIL_SIZE,
    ImageError,
    decode,
    decode_gray,
    square,
    thumbnail_jpeg,
)
from fracture.recipe import FRAMINGS, INTENSITIES, PRECISIONS, VIEWS

# Each view set as elements of the dihedral group, numbered as views_of makes them: element i is the image turned
# i % 4 quarter turns (torch.rot90), then, for i >= 4, mirrored left-right.
VIEW_ELEMENTS: dict[str, tuple[int, ...]] = {"identity": (0,), "dihedral": tuple(range(8)), "two-mirrors": (4, 5)}


DECODED_SCALE = 4  # "equalize-full": the equalised image has at least 4 x the input's side


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become a tensor; saved in every checkpoint and read back by the worker."""

    image_size: int = 128
    channels: int = 1
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.25,))
    views: str = "identity"
    # "equalize": each image's grey levels equalised (its histogram made flat) before the network sees it, so a
    # brighter, darker or flatter exposure of the same X-ray (any monotone look-up table) gives nearly the same input.
    # "equalize-full": the grey levels equalised first on the decoded image, before it is resized (a department's
    # look-up table acts on full-resolution pixels: once they are averaged into the input, no equalisation of the
    # small image undoes it; bench/intensity_order.py), then again at the input size as "equalize" does. A large
    # JPEG is then decoded at no less than DECODED_SCALE x the input size.
    intensity: str = "none"
    # "trim": the uniform black or white bands at the image's edges cropped away (content_boxes) and the rest
    # stretched back to the input size, before the intensity normalisation, so that a wider collimation or an
    # export's padding gives nearly the same input.
    framing: str = "none"
    # "bfloat16": served under bfloat16 autocast on the CPU too (always on CUDA); the threshold and figures of a
    # checkpoint are those of its served precision (fracture/release/cheaper.md).
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"unknown test-time views {self.views!r}; expected one of {VIEWS}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"unknown intensity normalisation {self.intensity!r}; expected one of {INTENSITIES}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"unknown framing {self.framing!r}; expected one of {FRAMINGS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown serving precision {self.precision!r}; expected one of {PRECISIONS}")

    @property
    def equalize_decoded(self) -> bool:
        """Whether the decoded image is equalised before it is resized ("equalize-full")."""
        return self.intensity == "equalize-full"

    @property
    def decode_size(self) -> int:
        """The least size a large JPEG is decoded at (its reduced-scale draft) for this input."""
        return self.image_size * DECODED_SCALE if self.equalize_decoded else self.image_size

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PreprocessSpec:
        return cls(
            image_size=int(d["image_size"]),  # type: ignore[call-overload]
            channels=int(d["channels"]),  # type: ignore[call-overload]
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[attr-defined]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[attr-defined]
            views=str(d.get("views", "identity")),  # checkpoints written before views existed: one view
            intensity=str(d.get("intensity", "none")),  # and before intensity normalisation: none
            framing=str(d.get("framing", "none")),  # and before framing: none
            precision=str(d.get("precision", "float32")),  # and before a serving precision: float32 on the CPU
        )

    def autocast(self, device: torch.device) -> torch.autocast:
        """The autocast the network runs under on `device`: bfloat16 on CUDA, and on the CPU when the spec says so."""
        enabled = device.type == "cuda" or self.precision == "bfloat16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_uint8_tensor(gray: Image.Image) -> torch.Tensor:
    """A decoded image as a (1, H, W) uint8 tensor: the compact form kept in caches and queues."""
    return torch.from_numpy(np.array(gray, dtype=np.uint8, copy=True)).unsqueeze(0)


# content_boxes: a grey level at most FRAME_TOL from black (or from white) counts as the frame's; a row or column
# is the frame's when at most FRAME_STRAY of its pixels (at least 2) are not (JPEG ringing, a stray bright pixel);
# at most FRAME_MAX_TRIM of each side is cropped, so a blank image keeps its middle.
FRAME_TOL = 20
FRAME_STRAY = 0.02
FRAME_MAX_TRIM = 0.4
FRAME_BLEND = 2  # lines where two frames meet (resizing blends them), passed over between rounds


def _frame_run(is_frame: torch.Tensor, cap: int) -> torch.Tensor:
    """(N, L) booleans -> (N,) the length of each row's leading run of True, at most `cap`."""
    return torch.cumprod(is_frame.to(torch.int32), dim=1).sum(1).clamp(max=cap)


def content_boxes(batch_u8: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """(N, 1, H, W) uint8 -> (N, 4) int64 (top, bottom, left, right; bottom and right exclusive): each image less
    the rows and columns at its edges that are uniformly near black or near white (a collimation band, a padded
    export's frame), never more than FRAME_MAX_TRIM of a side. Frames inside frames (a black padding around a white
    band) are cropped one per round, up to `rounds`; the lines where two frames meet, a blend of both after resizing,
    are passed over."""
    x = batch_u8[:, 0]
    n, h, w = x.shape
    not_black, not_white = x > FRAME_TOL, x < 255 - FRAME_TOL
    dev = x.device  # on the batch's device (a CUDA worker normalises there)
    rows, cols = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    full = torch.tensor([0, h, 0, w], device=dev)
    box = full.repeat(n, 1)
    for _ in range(rounds):
        # A side already cropped passes over its next FRAME_BLEND lines; all outside counts as frame either way.
        skip = box + (box != full).long() * torch.tensor([1, -1, 1, -1], device=dev) * FRAME_BLEND
        inside = ((rows >= skip[:, 0, None, None]) & (rows < skip[:, 1, None, None])
                  & (cols >= skip[:, 2, None, None]) & (cols < skip[:, 3, None, None]))
        nb, nw = not_black & inside, not_white & inside
        edges = []
        for axis, length, other in ((2, h, w), (1, w, h)):  # rows (counted across the width), then columns
            stray = max(2, round(FRAME_STRAY * other))
            frame = (nb.sum(axis) <= stray) | (nw.sum(axis) <= stray)  # (N, length)
            cap = int(FRAME_MAX_TRIM * length)
            edges += [_frame_run(frame, cap), length - _frame_run(frame.flip(1), cap)]
        found = torch.stack(edges, dim=1).long()
        # A side moves only if frame lines follow the skipped one.
        grew = torch.cat([found[:, 0:1] > skip[:, 0:1], found[:, 1:2] < skip[:, 1:2],
                          found[:, 2:3] > skip[:, 2:3], found[:, 3:4] < skip[:, 3:4]], dim=1)
        new = torch.where(grew, found, box)
        if torch.equal(new, box):
            break
        box = new
    return box


def crop_boxes(batch: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) image of a uint8 batch cropped to its box and stretched back to H x W (bilinear)."""
    h, w = batch.shape[-2:]
    out = batch.clone()
    for i, (top, bottom, left, right) in enumerate(boxes.tolist()):
        if (top, bottom, left, right) != (0, h, 0, w):
            part = batch[i:i + 1, :, top:bottom, left:right].float()
            out[i] = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False).round_().clamp_(0, 255)[0]
    return out


def uncrop_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The inverse of crop_boxes for float maps (N, H, W) of the cropped images: each shrunk back into its box of
    the original frame, zero outside it (the network never saw the frame)."""
    h, w = maps.shape[-2:]
    out = torch.zeros_like(maps)
    for i, (top, bottom, left, right) in enumerate(boxes.tolist()):
        out[i, top:bottom, left:right] = F.interpolate(maps[i][None, None], size=(bottom - top, right - left),
                                                       mode="bilinear", align_corners=False)[0, 0]
    return out


def framed(batch_u8: torch.Tensor, spec: PreprocessSpec, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """The batch as the spec frames it: trimmed (crop_boxes) for "trim", to `boxes` if the caller already found them
    (content_boxes of this batch), else as it is."""
    if spec.framing != "trim":
        return batch_u8
    return crop_boxes(batch_u8, content_boxes(batch_u8) if boxes is None else boxes)


def normalize(batch_u8: torch.Tensor, spec: PreprocessSpec, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a (N, 1, H, W) uint8 batch into the float input the network was trained on (`boxes`: the batch's
    content_boxes, for a caller that needs them too)."""
    batch_u8 = framed(batch_u8, spec, boxes)
    if spec.intensity in ("equalize", "equalize-full"):
        from torchvision.transforms.v2.functional import equalize  # only a checkpoint that equalizes pays its import

        batch_u8 = equalize(batch_u8)
    x = batch_u8.float().div_(255.0)
    if spec.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def views_of(x: torch.Tensor, views: str) -> list[torch.Tensor]:
    """The test-time views of a (N, C, S, S) batch, each a (N, C, S, S) batch (VIEW_ELEMENTS[views], in order)."""
    return [view_element(x, i) for i in VIEW_ELEMENTS[views]]


def view_element(x: torch.Tensor, i: int) -> torch.Tensor:
    """Element i of the dihedral group applied to a (..., S, S) batch: i % 4 quarter turns, then mirrored if i >= 4."""
    turned = torch.rot90(x, i % 4, dims=(-2, -1)) if i % 4 else x
    return turned.flip(-1) if i >= 4 else turned


def forward_views(model: torch.nn.Module, x: torch.Tensor, views: str) -> torch.Tensor:
    """The model's logits for a normalised batch, averaged over the spec's test-time views.

    One forward pass per view at the batch's own size (on 2 CPU cores, faster than one pass of the stacked
    views), each view in channels_last, the layout oneDNN and cuDNN convolve fastest (2.5x on this CPU).
    """
    logits = [model(v.contiguous(memory_format=torch.channels_last)) for v in views_of(x, views)]
    return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)


def forward_views_features(model: torch.nn.Module, x: torch.Tensor,
                           views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """As forward_views, and the detector's features of each view averaged alike, from the same passes."""
    pairs = [model.forward_features(v.contiguous(memory_format=torch.channels_last))  # type: ignore[operator]
             for v in views_of(x, views)]
    if len(pairs) == 1:
        return pairs[0]
    return torch.stack([p[0] for p in pairs]).mean(0), torch.stack([p[1] for p in pairs]).mean(0)


def load_u8(
    source: bytes | str | Path | BinaryIO, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode and resize one image into a (1, S, S) uint8 tensor, or raise ImageError."""
    return to_uint8_tensor(fit_input(decode_gray(source, spec.decode_size, max_pixels), spec))


def fit_input(gray: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """A decoded grayscale image made the network's square input: equalised first for "equalize-full", resized."""
    return square(ImageOps.equalize(gray) if spec.equalize_decoded else gray, spec.image_size)


