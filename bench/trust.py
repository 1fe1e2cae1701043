"""How far to trust a checkpoint: in distribution, on the second site, on made-up images, and what the flag costs.

    .venv/bin/python bench/trust.py                       # the release checkpoint
    .venv/bin/python bench/trust.py --model A.pt --model B.pt --markdown out.md

For each checkpoint: ROC-AUC, sensitivity, specificity and the share flagged out of distribution on the first
dataset's grouped test split (rebuilt from the checkpoint's split policy and seed), on every image of the second
site (`../shared/datasets/bone-fracture-roboflow-site`, never trained on by the release), and the share flagged
among made-up non-X-rays (noise, blank, colour photographs-like scenes, screenshots). Then the serving cost of the
detector: in-memory throughput of the served forward passes with and without it. Prints a table; the last line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.checkpoint import read_payload  # noqa: E402
from fracture.ml.inference import Predictor  # noqa: E402
from fracture.ml.preprocess import load_u8  # noqa: E402
from trainer.metrics import binary_metrics  # noqa: E402
from trainer.recalibrate import checkpoint_data  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
FIRST = Path(os.environ.get("FRACTURE_DATASET", SHARED / "bone-fracture-multiregion"))
SITE = SHARED / "bone-fracture-roboflow-site"


def made_up(n: int, size: int = 512, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Images that are not X-rays, n of each kind."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Image.Image]] = {"noise": [], "blank": [], "photo": [], "screenshot": []}
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        out["noise"].append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        out["blank"].append(Image.new("L", (size, size), int(255 * i / max(n - 1, 1))))
        # A colour scene: sky-to-ground gradient, a sun, blobs of texture (what a phone photo roughly is).
        sky = np.stack([80 + 100 * yy, 120 + 80 * yy, 220 - 120 * yy], -1) + rng.normal(0, 12, (size, size, 3))
        scene = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(scene)
        for _ in range(6):
            x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(20, 120))]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw.rectangle((0, int(size * (0.6 + 0.2 * rng.random())), size, size), fill=(60, 120 + 10 * i % 60, 40))
        out["photo"].append(scene)
        # A screenshot: white page, title bar, text lines, buttons.
        shot = Image.new("RGB", (size, size), (250, 250, 250))
        draw = ImageDraw.Draw(shot)
        draw.rectangle((0, 0, size, 40), fill=(40, 60, 120))
        for k in range(14):
            draw.text((20, 60 + 30 * k), f"Patient list row {k} {i}: report pending, click to open", fill=(20, 20, 20))
        draw.rectangle((size - 140, size - 60, size - 20, size - 20), fill=(30, 140, 60))
        out["screenshot"].append(shot)
    return out


def grouped_test(ckpt_path: Path, spec: Any, first_root: Path, spec_file: Path | None = None,
                 locked_file: Path | None = None) -> tuple[np.ndarray, list[torch.Tensor]]:
    """(labels, images) of the first dataset's images in the checkpoint's own grouped test split: the split is
    rebuilt from its policy and seed over its training data (the first dataset, or the union of `spec_file`
    less the locked images of `locked_file`), so none of these images was trained on."""
    data = checkpoint_data(read_payload(ckpt_path), spec, first_root, spec_file, locked_file,
                           Path(tempfile.gettempdir()) / "fracture-bench-cache")
    first = first_root.resolve()
    rows = [r for r in data.split_index["test"] if first in data.paths[data.row_md5[r]].resolve().parents]
    return data.labels[rows].numpy(), [data.images[r] for r in rows]


def site_images(spec: Any, members: set[str] | None = None) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The second site's images (those whose `label/filename` is in `members`, or all) and labels."""
    with open(SITE / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if members is None or f"{r['label']}/{r['filename']}" in members]
    return (np.array([1.0 if r["label"] == "fractured" else 0.0 for r in rows]),
            [load_u8(SITE / "blobs" / r["md5"], spec) for r in rows])


def run(predictor: Predictor, images: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
    probs, oods = [], []
    for i in range(0, len(images), 32):
        p, o = predictor.scores(torch.stack(images[i:i + 32]))
        probs.append(p)
        if o is not None:
            oods.append(o)
    return np.concatenate(probs), (np.concatenate(oods) if oods else None)


def figures(predictor: Predictor, y: np.ndarray, images: list[torch.Tensor]) -> dict[str, Any]:
    prob, ood = run(predictor, images)
    m = binary_metrics(y, prob, predictor.ckpt.threshold)
    out = {k: m[k] for k in ("n", "roc_auc", "sensitivity", "specificity", "accuracy", "confusion_matrix")}
    out["ood_flagged"] = None if ood is None else float(np.mean(ood >= 1))
    if ood is not None and (ood < 1).any() and len(np.unique(y[ood < 1])) == 2:
        kept = binary_metrics(y[ood < 1], prob[ood < 1], predictor.ckpt.threshold)
        out["in_distribution_only"] = {k: kept[k] for k in ("n", "roc_auc", "sensitivity", "specificity")}
    return out


def serving_cost(predictor: Predictor, rounds: int = 5, seconds: float = 3.0) -> dict[str, float]:
    """Images per second of the served passes (batch 32, in memory) with and without the detector, interleaved."""
    s = predictor.spec.image_size
    x = torch.randint(0, 256, (32, 1, s, s), dtype=torch.uint8)
    detector = predictor.detector
    rates: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for name, det in (("without", None), ("with", detector)):
            predictor.detector = det
            predictor.scores(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                predictor.scores(x)
                n += len(x)
            rates[name].append(n / (time.perf_counter() - t0))
    predictor.detector = detector
    w, wo = float(np.median(rates["with"])), float(np.median(rates["without"]))
    return {"with_ips": w, "without_ips": wo, "extra_cost": wo / w - 1}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", type=Path, help="checkpoint (repeatable; default: the release)")
    p.add_argument("--first", type=Path, default=None, help="the first dataset laid out (default: materialized)")
    p.add_argument("--made-up", type=int, default=25, help="made-up images of each kind")
    p.add_argument("--no-cost", action="store_true", help="skip the serving-cost rows")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    p.add_argument("--data-spec", type=Path, default=None,
                   help="the trainer's --data-spec of the models (a two-site training): its grouped test is rebuilt "
                        "over that union and restricted to the first dataset's images")
    p.add_argument("--locked", type=Path, default=None, help="the trainer's --locked of the models")
    p.add_argument("--site-parts", type=Path, default=None,
                   help="JSON list of the second site's locked evaluation part (train/<label>/<file> paths): "
                        "adds rows for that part and for the rest (the training part)")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    models = a.model or [REPO / "fracture" / "release" / "model.pt"]
    first = a.first
    if first is None:
        first = Path(tempfile.gettempdir()) / "fracture-bench-first"
        if not first.exists():
            subprocess.run([sys.executable, str(FIRST / "materialize"), str(first)], check=True, capture_output=True)
    fakes = made_up(a.made_up)
    report: dict[str, Any] = {}
    lines = ["| model | images | n | ROC-AUC | sensitivity | specificity | flagged out of distribution |",
             "|---|---|---|---|---|---|---|"]
    for path in models:
        predictor = Predictor.from_file(path, device=torch.device("cpu"))
        rows: dict[str, Any] = {}
        t0 = time.time()
        test = grouped_test(path, predictor.spec, first, a.data_spec, a.locked)
        rows["first dataset, grouped test"] = figures(predictor, *test)
        rows["second site, all images"] = figures(predictor, *site_images(predictor.spec))
        if a.site_parts:
            locked = {m.split("/", 1)[1] for m in json.loads(a.site_parts.read_text())}
            with open(SITE / "manifest.csv", newline="") as f:
                everything = {f"{r['label']}/{r['filename']}" for r in csv.DictReader(f)}
            rows["second site, locked evaluation part"] = figures(predictor, *site_images(predictor.spec, locked))
            rows["second site, training part"] = figures(predictor, *site_images(predictor.spec, everything - locked))
        for kind, ims in fakes.items():
            u8 = [load_u8(_png(im), predictor.spec) for im in ims]
            _, ood = run(predictor, u8)
            rows[f"made-up: {kind}"] = {"n": len(ims), "ood_flagged": None if ood is None else float(np.mean(ood >= 1))}
        if not a.no_cost and predictor.detector is not None:
            rows["serving cost"] = serving_cost(predictor)
        report[str(path)] = rows
        for name, r in rows.items():
            if name == "serving cost":
                lines.append(f"| {path.parent.name}/{path.name} | served passes, batch 32 | | | | | "
                             f"{r['with_ips']:.0f} img/s with the detector, {r['without_ips']:.0f} without: "
                             f"+{100 * r['extra_cost']:.1f}% |")
                continue
            lines.append(f"| {path.parent.name}/{path.name} | {name} | {r['n']} | {_f(r.get('roc_auc'))} | "
                         f"{_f(r.get('sensitivity'))} | {_f(r.get('specificity'))} | {_f(r.get('ood_flagged'))} |")
        print(f"{path}: {time.time() - t0:.0f} s", file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        a.markdown.write_text(table + "\n")
    print(json.dumps(report, default=float))
    return 0


def _png(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
