"""Where the served network looked: Grad-CAM over the served test-time views, and the PNGs that show it.

The map explains the served logit of the positive class (the mean over the checkpoint's test-time views): each view's
map is computed on that view, turned back to the image's own orientation, and the maps are averaged, so a rotated or
mirrored upload gets the rotated or mirrored map. Maps are in logit units per unit of image area, so one fixed
scale (EVIDENCE_SCALE) colours every image alike: on FracNet's last block, whose output the head only averages and
weighs, the map is the class-activation map and its mean over the image is the served logit less the head's bias
(a checkpoint trained with `--pooling lse` gets the same map; its logit is the map's log-mean-exp instead).
The layer, the method and the scale were chosen by measurement (bench/heatmaps.py, fracture/release/heatmaps.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fracture.ml.net import FracNet
from fracture.ml.preprocess import (
    VIEW_ELEMENTS,
    PreprocessSpec,
    content_boxes,
    decode_gray,
    normalize,
    uncrop_boxes,
    views_of,
)

# FracNet's block whose output Grad-CAM weighs: the last one (4x4 at 128 px; 8x8 at output stride 16). Its map adds
# up to the served logit, so a confident negative has (almost) no positive evidence to show; the map of the block
# before it (8x8), though it deleted the evidence a little faster in bench/heatmaps.py, does not add up to anything
# (correlation of its mean with the logit 0.15 over the release model's val and test images) and lit up confident
# negatives about as brightly as positives.
FRACNET_BLOCK = -1
# Full colour: positive evidence of this many logits per unit of image area (a 1/16 of the image at this density adds
# 25/16 = 1.6 to the log-odds of fracture). Measured on the release model's maps of the 834 distinct val and test
# images: about the median peak of those it calls fractured (24.5; 5% under 9.5), while of those it calls not
# fractured with p < 0.05, 54% have no positive evidence at all and 99% peak under 11.5 (under half colour). One scale
# for every image and, being in the logit's own units, for every checkpoint (fracture/release/heatmaps.md).
EVIDENCE_SCALE = 25.0
COLORMAP = "inferno"
MAX_SIDE = 1024  # the longest side of a stored overlay or composite, in pixels (the viewer scales it anyway)


def target_layer(model: nn.Module, block: int = FRACNET_BLOCK) -> nn.Module:
    """The layer whose activations and gradients make the map: a FracNet block, else the last convolution."""
    if isinstance(model, FracNet):
        return model.stages[block]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the network has no convolution to take a heatmap from")
    return convs[-1]


def unview(maps: torch.Tensor, views: str) -> torch.Tensor:
    """Turn each view's map (V, ..., S, S), in the order of preprocess.views_of, back to the image's orientation."""
    if views == "identity":
        return maps
    back = []
    for m, i in zip(maps, VIEW_ELEMENTS[views], strict=True):
        if i >= 4:  # views_of flips after turning: undo the flip first
            m = m.flip(-1)
        back.append(torch.rot90(m, -(i % 4), dims=(-2, -1)))
    return torch.stack(back)


def layer_maps(model: nn.Module, x: torch.Tensor, views: str, layer: nn.Module,
               plusplus: bool = False) -> torch.Tensor:
    """Signed Grad-CAM (or Grad-CAM++) maps of each view of one normalised image (1, C, S, S), at S x S, turned back
    to the image's orientation: (V, S, S). The target is the served score, the mean logit over the views; each map is
    in logit units per unit of image area (the gradient of the mean over V views, averaged over h x w cells, is
    multiplied back by V h w), so that for the last block of FracNet each view's map averages to its logit less the
    bias."""
    acts: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            batch = torch.cat(views_of(x, views)).contiguous(memory_format=torch.channels_last)
            logits = model(batch)
            (grads,) = torch.autograd.grad(logits.mean(), acts[0])
    finally:
        hook.remove()
    a, g = acts[0].detach().float(), grads.float()
    if plusplus:
        # Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 for a linear score): pixel-wise weights of the gradients.
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + (a * g3).sum((2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * g.clamp_min(0)).sum((2, 3), keepdim=True)
    else:
        weights = g.mean((2, 3), keepdim=True)
    cams = (weights * a).sum(1, keepdim=True) * (a.shape[0] * a.shape[2] * a.shape[3])
    size = x.shape[-1]
    cams = F.interpolate(cams, size=(size, size), mode="bilinear", align_corners=False)
    return unview(cams[:, 0], views)


def heatmap(model: nn.Module, image_u8: torch.Tensor, spec: PreprocessSpec, device: torch.device | None = None,
            block: int = FRACNET_BLOCK) -> np.ndarray:
    """The product's map for one decoded image (1, S, S) uint8 and its network: the positive evidence for the
    positive class, float32 (S, S) >= 0 in logit units per unit of image area (not scaled to the image: shown() puts
    it on the one scale), at the model's input resolution and in the image's orientation; the average over the
    served views of Grad-CAM. A spec that trims the frame (content_boxes) gets its map shrunk back into the box the
    network saw, and no evidence on the frame cropped away."""
    device = device or next(model.parameters()).device
    frames = content_boxes(image_u8.unsqueeze(0).cpu()) if spec.framing == "trim" else None
    x = normalize(image_u8.unsqueeze(0).to(device), spec, frames)
    heat = layer_maps(model, x, spec.views, target_layer(model, block)).mean(0).clamp_min(0).cpu()
    if frames is not None:
        heat = uncrop_boxes(heat[None], frames)[0]
    return heat.numpy().astype(np.float32)


def shown(heat: np.ndarray, scale: float = EVIDENCE_SCALE) -> np.ndarray:
    """What the overlay shows of a map in logit units: float32 in [0, 1] on one scale for every image (0: no evidence,
    1: `scale` or more), never the map over its own maximum."""
    return np.clip(heat / scale, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- pictures


def display_gray(source: str | Path | bytes, max_pixels: int, max_side: int = MAX_SIDE) -> Image.Image:
    """The image as served, in its own aspect (8-bit grayscale, EXIF-turned, DICOM windowed), at most `max_side`.

    The network sees it squashed to a square; stretching the map to this image's size undoes the squash. Raises
    ImageError as preprocess.decode does.
    """
    gray = decode_gray(source, max_side, max_pixels)
    gray.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return gray


def overlay(heat: np.ndarray, size: tuple[int, int], colormap: str = COLORMAP,
            scale: float = EVIDENCE_SCALE) -> Image.Image:
    """An RGBA overlay of `heat` (S, S, logit units as heatmap() gives) at `size` (width, height) on the one scale:
    colour from `colormap`, opacity rising with the evidence (transparent where the model found none; a confident
    negative is nearly transparent all over)."""
    from matplotlib import colormaps  # the colour table only: no pyplot, no backend

    square = Image.fromarray(heat.astype(np.float32), mode="F")
    value = shown(np.asarray(square.resize(size, Image.Resampling.BILINEAR), dtype=np.float32), scale)
    rgba = colormaps[colormap](value)  # (H, W, 4) floats
    rgba[..., 3] = np.clip(value * 1.25, 0.0, 1.0) ** 1.5 * 0.85
    return Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA")


def composite(gray: Image.Image, heat: np.ndarray, colormap: str = COLORMAP,
              scale: float = EVIDENCE_SCALE) -> Image.Image:
    """The image with its overlay drawn on it (RGB): what a download holds."""
    base = gray.convert("RGBA")
    return Image.alpha_composite(base, overlay(heat, base.size, colormap, scale)).convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
