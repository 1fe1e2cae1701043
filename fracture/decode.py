"""Decode X-ray files (JPEG, PNG, ..., DICOM) to 8-bit grayscale with Pillow: no torch, so the web can use it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
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

class ImageError(ValueError):
    """An input that cannot be classified; its message is shown to the user as the row's error."""


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
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        # The file could not be opened: why, without its path (a worker's is a place in the server's storage).
        raise ImageError(f"could not read file: {e.strerror or type(e).__name__}") from None
    except MemoryError:
        raise ImageError("could not decode image: out of memory") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"could not decode image: {e}") from None
    except Exception as e:  # Pillow plugins raise odd types on hostile input
        raise ImageError(f"could not decode image: {type(e).__name__}: {e}") from None


THUMBNAIL_SIZE = 160  # pixels on the longer side: a row of the job page's reading list


def thumbnail_jpeg(gray: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small JPEG of a decoded grayscale image, at its own aspect ratio (the job page's thumbnails)."""
    small = gray.copy()
    small.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80, optimize=False)
    return out.getvalue()
