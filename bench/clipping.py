"""Why a clipping look-up table still moves an equalised input: the background's share of the histogram.

    .venv/bin/python scripts/two_sources.py /tmp/two
    .venv/bin/python bench/clipping.py --two /tmp/two --model fracture/release/two-site-192/model.pt

An "equalize-full" checkpoint equalises each decoded X-ray's grey levels, so any strictly increasing look-up table
(a gamma) leaves its input nearly unchanged. A narrow window or a harder contrast is not strictly increasing: it
clips the darkest levels to black. In the first source most of an image is dark background (the median image has
62% of its pixels at or below 40), and plain equalisation spends that share of the output's grey range on the
background's noise; once the window has flattened the background to one level, the same X-ray's equalised input
looks different everywhere. For a seeded sample of the first source's held-out images (the model's own grouped test
split, as bench/robustness.py takes them) this prints, per intensity change of trainer.acquisition.AUDIT, how far the
network's input moves (mean absolute difference on 0..1 at the model's input size) under plain equalisation and
under an equalisation of the foreground alone (a prototype here, not a recipe option: pixels above Otsu's threshold
equalised onto 1..255, the background black; at the input size again, the pixels above black), and unless
--no-scores the served network's logit shift under the narrow window, the quarter resolution and contrast x1.3
(median over the normal and the fractured images) and the ROC-AUC per half of the images split by the background's
share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy.special import logit
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import REPO, first_held_out, load_gray  # noqa: E402

sys.path.insert(0, str(REPO))
from fracture.ml.inference import Predictor  # noqa: E402
from fracture.ml.preprocess import square  # noqa: E402
from trainer.acquisition import AUDIT, AuditChange  # noqa: E402
from trainer.robustness import _scores  # noqa: E402

DARK = 40  # the narrow window's low end (AUDIT's "narrow window (40-215)")


def otsu(a: np.ndarray) -> int:
    """Otsu's threshold of an 8-bit image: the level that best splits its histogram in two."""
    p = np.bincount(a.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    w, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
    return int(np.argmax(between))


def equalize_foreground(im: Image.Image, black_only: bool = False) -> Image.Image:
    """The prototype: the grey levels above Otsu's threshold equalised onto 1..255, the rest black (`black_only`: the
    levels above 0, for an image made so already and resized)."""
    a = np.asarray(im)
    t = 0 if black_only else otsu(a)
    fg = a > t
    if fg.sum() < 16:
        return ImageOps.equalize(im)
    cdf = np.cumsum(np.bincount(a[fg], minlength=256)) / fg.sum()
    lut = np.where(np.arange(256) > t, 1 + np.round(cdf * 254), 0).astype(np.uint8)
    return Image.fromarray(lut[a])


def network_input(im: Image.Image, size: int, foreground: bool) -> np.ndarray:
    """What an equalising checkpoint's network sees of a decoded image: equalised, resized, equalised again."""
    if foreground:
        small = square(equalize_foreground(im), size)
        return np.asarray(equalize_foreground(small, black_only=True), dtype=np.float32) / 255
    return np.asarray(ImageOps.equalize(square(ImageOps.equalize(im), size)), dtype=np.float32) / 255


def displacement(images: list[Image.Image], unchanged: list[np.ndarray], change: AuditChange, size: int,
                 foreground: bool) -> float:
    """The mean absolute move of the images' inputs (`unchanged`: their inputs as they are) under `change`."""
    assert change.change is not None
    return float(np.mean([np.abs(network_input(change.change(im), size, foreground) - base).mean()
                          for im, base in zip(images, unchanged, strict=True)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--two", type=Path, required=True, help="scripts/two_sources.py's folder")
    ap.add_argument("--model", type=Path, default=REPO / "fracture" / "release" / "two-site-192" / "model.pt",
                    help="whose held-out images and (unless --no-scores) whose network")
    ap.add_argument("--limit", type=int, default=120, help="images for the displacement (seeded sample)")
    ap.add_argument("--no-scores", action="store_true", help="skip the network's scores (the displacement only)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    items = first_held_out([args.model], args.two)[0]
    loaded = [(im, y) for im, y in ((load_gray(p), y) for p, y in items) if im is not None]
    images, labels = [im for im, _ in loaded], np.array([y for _, y in loaded])
    dark = np.array([(np.asarray(im) <= DARK).mean() for im in images])
    sample = sorted(np.random.default_rng(0).choice(len(images), min(args.limit, len(images)), replace=False))
    predictor = Predictor.from_file(args.model, device=torch.device("cpu"))
    size = predictor.spec.image_size
    quartiles = np.quantile(dark, [.25, .5, .75]).tolist()
    moves: dict[str, list[float]] = {}
    report: dict[str, object] = {"n": len(images), "dark_share_quartiles": quartiles, "input_size": size,
                                 "displacement": moves}
    print(f"{len(images)} held-out first-source images; share of pixels <= {DARK}: quartiles "
          + " / ".join(f"{q:.2f}" for q in quartiles))
    print("\n| change | input moved, plain equalisation | input moved, foreground equalised |\n|---|---|---|")
    sampled = [images[i] for i in sample]
    bases = {fg: [network_input(im, size, fg) for im in sampled] for fg in (False, True)}
    for change in AUDIT:
        if change.group not in ("intensity", "windowing"):
            continue
        moved = [displacement(sampled, bases[fg], change, size, fg) for fg in (False, True)]
        moves[change.name] = moved
        print(f"| {change.name} | {moved[0]:.3f} | {moved[1]:.3f} |", flush=True)
    if not args.no_scores:
        named = {c.name: c for c in AUDIT}
        base, _ = _scores(predictor, images, named["none"])
        print("\n| change | logit shift, normal (median) | logit shift, fractured (median) | ROC-AUC, less "
              "background (unchanged) | ROC-AUC, more background (unchanged) |\n|---|---|---|---|---|")
        less = dark <= np.median(dark)
        for name in ("narrow window (40-215)", "quarter resolution", "contrast x1.3"):
            prob, _ = _scores(predictor, images, named[name])
            shift = logit(np.clip(prob, 1e-6, 1 - 1e-6)) - logit(np.clip(base, 1e-6, 1 - 1e-6))
            aucs = [(roc_auc_score(labels[s], prob[s]), roc_auc_score(labels[s], base[s])) for s in (less, ~less)]
            report[name] = {"shift_normal": float(np.median(shift[labels == 0])),
                            "shift_fractured": float(np.median(shift[labels == 1])), "auc_halves": aucs}
            print(f"| {name} | {np.median(shift[labels == 0]):+.2f} | {np.median(shift[labels == 1]):+.2f} | "
                  f"{aucs[0][0]:.3f} ({aucs[0][1]:.3f}) | {aucs[1][0]:.3f} ({aucs[1][1]:.3f}) |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
