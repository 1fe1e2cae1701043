"""Decode and preprocess X-rays the same way for training and serving, so serving never drifts."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fracture import dicom

# Formats an X-ray export realistically comes in; anything else is refused, not guessed.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error row, not half an image
# decode() checks the header's size against its own, configurable limit before any pixel is decoded. Pillow's
# global guard would otherwise refuse a configured limit above ~89M pixels, word the refusal differently, and
# need a warnings filter that is not thread-safe (the worker decodes in threads).
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 64_000_000
# Test-time views whose logits are averaged. "dihedral" is the 8 rotations and mirrorings the training
# augmentation draws from: averaging over all of them makes a prediction exactly the same for a rotated or
# mirrored upload of the same X-ray, and measured on val it raised ROC-AUC (0.9972 -> 0.9986, release model).
VIEWS = ("identity", "dihedral")


class ImageError(ValueError):
    """An input that cannot be classified; its message is shown to the user as the row's error."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become a tensor; saved in every checkpoint and read back by the worker."""

    image_size: int = 128
    channels: int = 1
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.25,))
    views: str = "identity"

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"unknown test-time views {self.views!r}; expected one of {VIEWS}")

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
        )


def _to_grayscale(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float X-rays: stretch the real range to 8 bits instead of clipping at 255.
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im if im.mode == "L" else im.convert("L")


def decode(source: bytes | str | Path | BinaryIO, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image to 8-bit grayscale at `size`x`size`, or raise ImageError with a reason."""
    return square(decode_gray(source, size, max_pixels), size)


def square(gray: Image.Image, size: int) -> Image.Image:
    """A decoded grayscale image resized to the network's `size`x`size` input."""
    return gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)


def decode_gray(source: bytes | str | Path | BinaryIO, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image to 8-bit grayscale at its own aspect ratio (a large JPEG decoded at a reduced scale no
    smaller than `size`), or raise ImageError with a reason. DICOM files get their modality and VOI LUT."""
    fp: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source  # type: ignore[assignment]
    try:
        head = dicom.head_of(fp)
        if dicom.has_preamble(head) or dicom.is_bare_dataset(head):  # no image format Pillow reads starts so
            return Image.fromarray(dicom.to_gray(fp, max_pixels))
        im = Image.open(fp, formats=ALLOWED_FORMATS)  # reads the header only
        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ImageError("image has no pixels")
            if w * h > max_pixels:
                raise ImageError(f"image too large: {w}x{h} pixels, above the limit of {max_pixels} (MAX_IMAGE_PIXELS)")
            if im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger.
                im.draft("L", (size, size))
            im.load()
            # In place, and no convert() of an image already "L": a copy of a 64M-pixel image is 64 MB more.
            ImageOps.exif_transpose(im, in_place=True)
            return _to_grayscale(im)
    except ImageError:
        raise
    except dicom.DicomError as e:
        raise ImageError(str(e)) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not an image (or a format that is not accepted: JPEG, PNG, GIF, BMP, TIFF, WEBP, DICOM)"
        ) from None
    except MemoryError:
        raise ImageError("could not decode image: out of memory") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"could not decode image: {e}") from None
    except Exception as e:  # Pillow plugins raise odd types on hostile input
        raise ImageError(f"could not decode image: {type(e).__name__}: {e}") from None


def to_uint8_tensor(gray: Image.Image) -> torch.Tensor:
    """A decoded image as a (1, H, W) uint8 tensor: the compact form kept in caches and queues."""
    return torch.from_numpy(np.array(gray, dtype=np.uint8, copy=True)).unsqueeze(0)


def normalize(batch_u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Turn a (N, 1, H, W) uint8 batch into the float input the network was trained on."""
    x = batch_u8.float().div_(255.0)
    if spec.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def views_of(x: torch.Tensor, views: str) -> list[torch.Tensor]:
    """The test-time views of a (N, C, S, S) batch, each a (N, C, S, S) batch."""
    if views == "identity":
        return [x]
    turns = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return turns + [t.flip(3) for t in turns]


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


THUMBNAIL_SIZE = 160  # pixels on the longer side: a row of the job page's reading list


def thumbnail_jpeg(gray: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small JPEG of a decoded grayscale image, at its own aspect ratio (the job page's thumbnails)."""
    small = gray.copy()
    small.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80, optimize=False)
    return out.getvalue()
