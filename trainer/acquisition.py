"""What another department's X-ray system or export does to an image, as named, parameterised changes.

One family of changes serves two ends: the robustness audit applies each at a fixed strength to held-out X-rays
(`AUDIT`), and the `acquisition` training augmentation draws them at random strengths (`random_acquisition`), so
that what the audit measures is what the recipe is taught to ignore. Every change takes and returns an 8-bit
grayscale PIL image and keeps its size (a margin shrinks the X-ray inside the same frame, as a wider collimation
or a padded export does), so it applies as well to a full-resolution file as to the network's 128-px input.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Change = Callable[[Image.Image], Image.Image]


def margin(frac: float, value: int = 0, shift: tuple[float, float] = (0.0, 0.0)) -> Change:
    """The X-ray shrunk into a frame of `value` whose bands are `frac` of the side each (a wider collimation or an
    export's padding); `shift` (-1..1 per axis) moves it off centre."""

    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        iw, ih = max(1, round(w * (1 - 2 * frac))), max(1, round(h * (1 - 2 * frac)))
        canvas = Image.new("L", (w, h), value)
        x = round((w - iw) / 2 * (1 + shift[0]))
        y = round((h - ih) / 2 * (1 + shift[1]))
        canvas.paste(im.resize((iw, ih), Image.Resampling.BILINEAR), (x, y))
        return canvas

    return apply


def rotate(degrees: float) -> Change:
    """Rotated about the centre in the same frame, the corners filled black (a tilted cassette, a rotated export)."""

    def apply(im: Image.Image) -> Image.Image:
        return im.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=0)

    return apply


def _lut(values: np.ndarray) -> Change:
    table = np.clip(np.round(values), 0, 255).astype(np.uint8).tolist()

    def apply(im: Image.Image) -> Image.Image:
        return im.point(table)

    return apply


def gamma(g: float) -> Change:
    """out = in^g on 0..1: below 1 brighter (a softer exposure or another detector curve), above 1 darker."""
    return _lut(255.0 * (np.arange(256) / 255.0) ** g)


def contrast(factor: float) -> Change:
    """Contrast scaled about mid-grey (a flatter or harder look-up table)."""
    return _lut(127.5 + (np.arange(256) - 127.5) * factor)


def window(low: int, high: int) -> Change:
    """The grey levels low..high stretched to 0..255 (values outside clipped), as a viewer's window/level does;
    low > high inverts nothing: use low < high."""
    return _lut((np.arange(256) - low) * 255.0 / max(high - low, 1))


def resolution(scale: float) -> Change:
    """Acquired at `scale` of the resolution (a coarser detector or a downsized export), shown at the same size."""

    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        small = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR,
                          reducing_gap=2.0)
        return small.resize((w, h), Image.Resampling.BILINEAR)

    return apply


def jpeg(quality: int) -> Change:
    """Saved once as a JPEG of this quality (a lossy export)."""

    def apply(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

    return apply


def then(*changes: Change) -> Change:
    """The changes one after the other."""

    def apply(im: Image.Image) -> Image.Image:
        for change in changes:
            im = change(im)
        return im

    return apply


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, px))


def markers(letter: str = "R", text: str = "AP ERECT 12/03", corner: int = 1, size: float = 0.08,
            value: int = 255) -> Change:
    """A burned-in side marker (`letter`, `size` of the side high) in one corner (0-3, clockwise from top left) and
    a line of annotation text along the opposite edge, as exports and technologists add them."""

    def apply(im: Image.Image) -> Image.Image:
        out = im.copy()
        w, h = out.size
        px = max(6, round(min(w, h) * size))
        draw = ImageDraw.Draw(out)
        pad = max(1, px // 3)
        xs = (pad, w - pad - px, w - pad - px, pad)
        ys = (pad, pad, h - pad - px, h - pad - px)
        draw.text((xs[corner], ys[corner]), letter, fill=value, font=_font(px))
        if text:
            small = _font(max(6, px // 2))
            ty = h - pad - px // 2 if corner in (0, 1) else pad
            draw.text((pad, ty), text, fill=value, font=small)
        return out

    return apply


@dataclass(frozen=True)
class AuditChange:
    name: str
    group: str  # the kind of change (margins, rotation, intensity, windowing, resolution, markers)
    change: Change | None  # None: the images as they are


# The audit's family, its ranges from what the two sources hold (bench/robustness.py --survey): dark bands at the
# edges of 3% (median) to 15% (90th percentile) of the side in the first source and up to 39% in the second; the
# images' mean grey level spans gamma 0.73-1.27 around the median in the first source and 0.39-1.98 in the second;
# the second's exports hold copies rotated with black corners, and burned-in side markers and text are common.
AUDIT: tuple[AuditChange, ...] = (
    AuditChange("none", "none", None),
    AuditChange("black margin 5%", "margins", margin(0.05)),
    AuditChange("black margin 10%", "margins", margin(0.10)),
    AuditChange("white margin 5%", "margins", margin(0.05, 255)),
    AuditChange("rotated 10 degrees, black corners", "rotation", rotate(10)),
    AuditChange("rotated 20 degrees, black corners", "rotation", rotate(-20)),
    AuditChange("brighter (gamma 0.7)", "intensity", gamma(0.7)),
    AuditChange("darker (gamma 1.4)", "intensity", gamma(1.4)),
    AuditChange("much brighter (gamma 0.5)", "intensity", gamma(0.5)),
    AuditChange("much darker (gamma 2.0)", "intensity", gamma(2.0)),
    AuditChange("contrast x0.7", "intensity", contrast(0.7)),
    AuditChange("contrast x1.3", "intensity", contrast(1.3)),
    AuditChange("narrow window (40-215)", "windowing", window(40, 215)),
    AuditChange("half resolution, JPEG quality 30", "resolution", then(resolution(0.5), jpeg(30))),
    AuditChange("quarter resolution", "resolution", resolution(0.25)),
    AuditChange("side marker and text", "markers", markers()),
)


def random_acquisition(rng: np.random.Generator, lossy: bool = False) -> Change:
    """One random draw from the family, at training strengths that cover the audit's and go past them: each kind
    of change with its own probability, composed in the order an acquisition and its export apply them."""
    return random_acquisition_geometry(rng, lossy)[0]


def random_acquisition_geometry(rng: np.random.Generator, lossy: bool = False) -> tuple[Change, Change]:
    """random_acquisition's draw (the same draws from `rng`) and its geometric part alone (rotation and margins),
    which moves a fracture box's mask as the change moves the image. `lossy` draws the changes that lose
    information (a clipping contrast or window, a coarser resolution) twice as often, the resolution from a fifth
    of the side (log-uniform), and the rest as without it."""
    steps: list[Change] = []
    moves: list[Change] = []
    if rng.random() < 0.5:  # the look-up table: gamma, then contrast or a window
        steps.append(gamma(float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))))
    if rng.random() < (0.6 if lossy else 0.3):
        if rng.random() < 0.5:
            steps.append(contrast(float(rng.uniform(0.6, 1.4))))
        else:
            low = int(rng.integers(0, 60))
            steps.append(window(low, int(rng.integers(max(low + 120, 190), 256))))
    if rng.random() < (0.4 if lossy else 0.2):
        steps.append(resolution(float(np.exp(rng.uniform(np.log(0.2), np.log(0.8)))) if lossy
                                else float(rng.uniform(0.25, 0.8))))
    if rng.random() < 0.4:
        moves.append(rotate(float(rng.uniform(-30, 30))))
        steps.append(moves[-1])
    if rng.random() < 0.35:
        value = 0 if rng.random() < 0.8 else 255
        frac, shift = float(rng.uniform(0.02, 0.18)), (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
        steps.append(margin(frac, value, shift))
        moves.append(margin(frac, 0, shift))
    if rng.random() < 0.3:
        steps.append(markers(str(rng.choice(list("LRAP"))), "" if rng.random() < 0.5 else "PORTABLE",
                             int(rng.integers(0, 4)), float(rng.uniform(0.05, 0.12)),
                             255 if rng.random() < 0.85 else 0))
    if rng.random() < 0.2:
        steps.append(jpeg(int(rng.integers(20, 90))))
    return then(*steps), then(*moves)
