"""Decode and preprocess X-rays the same way for training and serving, so serving never drifts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

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
from fracture.recipe import INTENSITIES, PRECISIONS, VIEWS

# Each view set as elements of the dihedral group, numbered as views_of makes them: element i is the image turned
# i % 4 quarter turns (torch.rot90), then, for i >= 4, mirrored left-right.
VIEW_ELEMENTS: dict[str, tuple[int, ...]] = {"identity": (0,), "dihedral": tuple(range(8)), "two-mirrors": (4, 5)}


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
    intensity: str = "none"
    # "bfloat16": served under bfloat16 autocast on the CPU too (always on CUDA); the threshold and figures of a
    # checkpoint are those of its served precision (fracture/release/cheaper.md).
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"unknown test-time views {self.views!r}; expected one of {VIEWS}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"unknown intensity normalisation {self.intensity!r}; expected one of {INTENSITIES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown serving precision {self.precision!r}; expected one of {PRECISIONS}")

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
            precision=str(d.get("precision", "float32")),  # and before a serving precision: float32 on the CPU
        )

    def autocast(self, device: torch.device) -> torch.autocast:
        """The autocast the network runs under on `device`: bfloat16 on CUDA, and on the CPU when the spec says so."""
        enabled = device.type == "cuda" or self.precision == "bfloat16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_uint8_tensor(gray: Image.Image) -> torch.Tensor:
    """A decoded image as a (1, H, W) uint8 tensor: the compact form kept in caches and queues."""
    return torch.from_numpy(np.array(gray, dtype=np.uint8, copy=True)).unsqueeze(0)


def normalize(batch_u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Turn a (N, 1, H, W) uint8 batch into the float input the network was trained on."""
    if spec.intensity == "equalize":
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
    return to_uint8_tensor(decode(source, spec.image_size, max_pixels))


