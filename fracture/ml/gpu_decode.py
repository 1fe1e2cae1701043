"""Decode JPEGs in batches with torchvision (nvJPEG on a CUDA device) and resize them on that device.

A GPU worker's limit is decoding (an H100 ran the network at 22,000 images/s and Pillow decoding at about 1,200):
this path moves the JPEG decode and the resize onto the device. Only JPEGs that torchvision decodes as Pillow would
come here (sniff_jpeg); every other file, and any JPEG torchvision refuses, takes the Pillow path, image by image.
torchvision is imported only when this path runs: a CPU worker serving a FracNet checkpoint never loads it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from fracture import dicom

DECODERS = ("auto", "pillow", "torchvision")
EXIF_ORIENTATION = 0x0112
_SOI = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"


def choose_decoder(decoder: str, device: torch.device) -> str:
    """The decoder a predictor on `device` uses: `auto` is torchvision on a CUDA device, Pillow elsewhere."""
    if decoder not in DECODERS:
        raise ValueError(f"DECODER: {decoder!r} is not one of {', '.join(DECODERS)}")
    if decoder == "auto":
        return "torchvision" if device.type == "cuda" else "pillow"
    return decoder


@dataclass(frozen=True)
class Jpeg:
    """A JPEG read and checked in a decode thread, to be decoded in a batch: its bytes and EXIF orientation."""

    data: torch.Tensor  # 1-D uint8, on the CPU (decode_jpeg's input)
    orientation: int  # EXIF orientation, 1 (as stored) to 8


def sniff_jpeg(data: bytes, max_pixels: int) -> Jpeg | None:
    """`data` as a Jpeg when torchvision decodes it as Pillow would, else None (the Pillow path handles it).

    Only a complete (ends with EOI), baseline-or-progressive JPEG of grey or YCbCr pixels within `max_pixels`, read
    from the header before any pixel is decoded: CMYK, a truncated file, a DICOM file (whatever its preamble holds),
    an image above the limit and anything Pillow cannot open go to the Pillow path, which words their error rows.
    """
    if data[:3] != _SOI or dicom.has_preamble(data[: dicom.HEAD_BYTES]):
        return None
    # Cut short: libjpeg would pad it, Pillow refuses it. Only the tail is looked at (not a copy of every file);
    # a file padded with more zeros than that goes to the Pillow path, which decides.
    if not data[-4096:].rstrip(b"\0").endswith(_EOI):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:  # the header only
            width, height = im.size
            mode = im.mode
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  (whatever Pillow refuses, its own path reports)
        return None
    if mode not in ("L", "RGB") or width < 1 or height < 1 or width * height > max_pixels:
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1  # as Pillow's exif_transpose: an unknown value turns nothing
    return Jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned as its EXIF orientation says (as PIL.ImageOps.exif_transpose does)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def decode_jpegs(jpegs: list[Jpeg], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG decoded to a (1, H, W) uint8 grey image on `device`, upright; None for one torchvision refuses.

    One batched call (nvJPEG decodes a list faster than one image at a time); it returns nothing when any image
    fails, so then each is decoded alone to find which. EXIF orientation is applied here, not by torchvision: its
    apply_exif_orientation works on the CPU only.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    data = [j.data for j in jpegs]
    decoded: list[torch.Tensor | None]
    try:
        decoded = list(decode_jpeg(data, mode=ImageReadMode.GRAY, device=device))
    except RuntimeError:
        decoded = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=ImageReadMode.GRAY, device=device))
            except RuntimeError:
                decoded.append(None)
    return [None if d is None else orient(d, j.orientation) for d, j in zip(decoded, jpegs, strict=True)]


def draft(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (1, H, W) uint8 image averaged down 2, 4 or 8 times when it is at least that many times `size` on both
    sides, as Pillow's JPEG draft mode has libjpeg decode it (fracture.decode.decode_gray): resized after this, the
    large images of the dataset come within 0.15 grey levels of the Pillow path's input, against 2.3 without it."""
    height, width = image.shape[-2:]
    scale = 1
    while scale < 8 and min(height, width) // (scale * 2) >= size:
        scale *= 2
    if scale == 1:
        return image
    x = F.avg_pool2d(image.unsqueeze(0).float(), scale, ceil_mode=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (1, H, W) uint8 image, or an (N, 1, H, W) batch of them, resized to `size` (height, width) on its device
    as Pillow's BILINEAR resize does.

    Antialiased bilinear (a triangle filter widened by the scale when shrinking), rounded to the nearest grey level:
    on 51 real JPEGs 0.11 grey levels from Pillow's own resize of the same decoded pixels, against 0.72 without
    antialiasing and 0.46 truncating instead of rounding.
    """
    if tuple(images.shape[-2:]) == size:
        return images
    batch = images.dim() == 4
    x = (images if batch else images.unsqueeze(0)).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x if batch else x[0]


def thumbnail_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """The (height, width) of a thumbnail whose longer side is at most `longest` (never enlarged)."""
    if max(height, width) <= longest:
        return height, width
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def encode_thumbnail(small: torch.Tensor) -> bytes:
    """A (1, h, w) uint8 CPU image as the job page's thumbnail JPEG (the quality of fracture.decode.thumbnail_jpeg)."""
    out = io.BytesIO()
    Image.fromarray(small[0].numpy()).save(out, format="JPEG", quality=80, optimize=False)
    return out.getvalue()
