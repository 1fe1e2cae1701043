"""Where a checkpoint's intensity and framing invariance breaks: the order of equalising and resizing, and the trim.

    .venv/bin/python scripts/two_sources.py /tmp/two
    .venv/bin/python bench/intensity_order.py --two /tmp/two --model fracture/release/robust-framing/model.pt

An `--intensity equalize` checkpoint equalises the grey levels of its 128-px input, after the X-ray was resized to
it. A department's look-up table (gamma, contrast, window) acts on the full-resolution image, before that resize:
averaging the changed pixels is not changing the averaged ones (a gamma bends a textured patch's mean away from the
curve at its mean), so the 128-px equalisation cannot undo the change exactly. And `--framing trim` finds the frame
on the grey levels as they come: a darker exposure turns more of a dark edge into "frame" and crops more.

For a seeded sample of the first source's held-out images (the checkpoint's own grouped test split, as
bench/robustness.py takes them) and each intensity change of trainer.acquisition.AUDIT (and a black margin, for
scale), this prints the served ROC-AUC four ways: as served; the frame found on the equalised input (so a monotone
change finds the same frame); the grey levels equalised at full resolution before the resize (PIL's
ImageOps.equalize: what an intensity normalisation done at decode time would see); and without the trim. The
checkpoint was trained on none of the alternatives, so read each column against its own "none" row: a change that
costs little there is one that preprocessing can remove; one that costs as much everywhere destroyed information
(clipped grey levels) or is something the network itself must learn. Also the trim's kept area and how far its box
moves from the unchanged image's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score
from torchvision.transforms.v2.functional import equalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import REPO, first_held_out, load_gray  # noqa: E402

sys.path.insert(0, str(REPO))
from fracture.ml import preprocess  # noqa: E402
from fracture.ml.inference import Predictor  # noqa: E402
from fracture.ml.preprocess import PreprocessSpec, content_boxes, fit_input, to_uint8_tensor  # noqa: E402
from trainer.acquisition import AUDIT, AuditChange  # noqa: E402

GROUPS = ("none", "intensity", "windowing")
SCALE = ("black margin 10%",)


def _u8(images: list[Image.Image], change: AuditChange, spec: PreprocessSpec, full_equalize: bool) -> torch.Tensor:
    """The inputs as the checkpoint makes them of the changed images (fit_input), each equalised at its full
    resolution first if `full_equalize` (what an "equalize-full" checkpoint does already)."""
    out = []
    for im in images:
        changed = change.change(im) if change.change else im
        out.append(to_uint8_tensor(fit_input(ImageOps.equalize(changed) if full_equalize else changed, spec)))
    return torch.stack(out)


def _served(predictor: Predictor, u8: torch.Tensor, y: np.ndarray, framing: str,
            boxes_of: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """ROC-AUC of the checkpoint served with `framing`, its trim's frame found by `boxes_of` if given."""
    spec = predictor.spec
    predictor.spec = dataclasses.replace(spec, framing=framing)
    found = preprocess.content_boxes
    if boxes_of is not None:
        preprocess.content_boxes = boxes_of  # type: ignore[assignment]
    try:
        prob, _ = predictor.scores(u8)
    finally:
        predictor.spec, preprocess.content_boxes = spec, found
    return float(roc_auc_score(y, prob))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--two", type=Path, required=True, help="the folder scripts/two_sources.py wrote")
    p.add_argument("--model", type=Path, default=REPO / "fracture" / "release" / "robust-framing" / "model.pt")
    p.add_argument("--limit", type=int, default=240, help="a seeded sample of this many images (0: all)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    t0 = time.time()
    first = first_held_out([a.model], a.two)[0]
    if a.limit:
        first = [first[i] for i in sorted(np.random.default_rng(0).permutation(len(first))[:a.limit])]
    pairs = [(load_gray(path), label) for path, label in first]
    images = [im for im, _ in pairs if im is not None]
    y = np.array([label for im, label in pairs if im is not None])
    predictor = Predictor.from_file(a.model, device=torch.device("cpu"))
    spec, size = predictor.spec, predictor.spec.image_size
    trimmed = spec.framing == "trim"

    def on_equalized(u8: torch.Tensor, rounds: int = 3) -> torch.Tensor:
        return content_boxes(equalize(u8), rounds)

    rows: list[dict[str, Any]] = []
    base: torch.Tensor | None = None
    for change in AUDIT:
        if change.group not in GROUPS and change.name not in SCALE:
            continue
        u8 = _u8(images, change, spec, full_equalize=False)
        row: dict[str, Any] = {"change": change.name, "served": _served(predictor, u8, y, spec.framing)}
        if trimmed:
            box = content_boxes(u8).float()
            base = box if base is None else base
            row["kept_area"] = float(((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])).mean() / size ** 2)
            row["box_moved_px"] = float((box - base).abs().mean())
            row["trim_on_equalized"] = _served(predictor, u8, y, "trim", on_equalized)
            row["no_trim"] = _served(predictor, u8, y, "none")
        row["full_res_equalized"] = _served(predictor, _u8(images, change, spec, full_equalize=True), y,
                                            spec.framing)
        rows.append(row)
        print(f"{change.name}: {time.time() - t0:.0f} s", file=sys.stderr)
    cols = [("served", "as served"), ("trim_on_equalized", "frame found on the equalised input"),
            ("full_res_equalized", "equalised at full resolution, then resized"), ("no_trim", "no trim"),
            ("kept_area", "trim's kept area"), ("box_moved_px", "trim box moved (px, mean per side)")]
    cols = [(k, t) for k, t in cols if k in rows[0]]
    print(f"{a.model} ({spec.intensity} intensity, {spec.framing} framing), {len(y)} first-source held-out images; "
          f"ROC-AUC:\n")
    print("| change | " + " | ".join(t for _, t in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{row[k]:.1f}" if k == "box_moved_px" else f"{row[k]:.3f}" for k, _ in cols]
        print(f"| {row['change']} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"model": str(a.model), "n": len(y), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
