"""Where a model loses the second site: its ROC-AUC per body region and per what the image shows (cast or splint,
orthopaedic metal, a multi-view panel), from a blinded review of the site's locked images.

    .venv/bin/python scripts/two_sources.py /tmp/two
    .venv/bin/python bench/site_subgroups.py sheets --two /tmp/two --out /tmp/review
    #   a reviewer views /tmp/review/sheet_NN.png (16 numbered images each, in a seeded random order, with no label,
    #   file name or score) and writes /tmp/review/labels*.csv: idx,region,immob,metal,panel
    #   (region: finger, hand, wrist, forearm, elbow, humerus, shoulder, other; immob, metal: y, n or u for unsure;
    #   panel: y or n)
    .venv/bin/python bench/site_subgroups.py score --two /tmp/two --review /tmp/review \
        --model fracture/release/two-site-192/model.pt [--model ...] [--json OUT]

`sheets` keeps the order's key in OUT/.key.json, which a reviewer must not open. `score` joins the review with the
site's labels and each model's served probabilities (the workers' decoding, bench/robustness.py's load_gray) and
prints, per subgroup, the number of images, fractured among them and the ROC-AUC; per class, how often the review
saw a cast or splint and metal; and how many of the not-fractured images scoring highest show either. The review
and the sheets are derived from the dataset's images: they stay out of the project, as its README asks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import REPO, load_gray, site_locked  # noqa: E402

sys.path.insert(0, str(REPO))
from fracture.ml.inference import Predictor  # noqa: E402
from trainer.acquisition import AUDIT  # noqa: E402
from trainer.robustness import _scores  # noqa: E402

PER_SHEET = 16
CELL = 300
FIELDS = ("idx", "region", "immob", "metal", "panel")


def make_sheets(two: Path, out: Path, seed: int) -> int:
    """Contact sheets of the locked images in a seeded order, each image tagged with its index only."""
    paths, _, _ = site_locked(two)
    order = [str(p) for p in paths]
    random.Random(seed).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".key.json").write_text(json.dumps(order))
    for start in range(0, len(order), PER_SHEET):
        sheet = Image.new("RGB", (4 * CELL, 4 * CELL), "white")
        draw = ImageDraw.Draw(sheet)
        for j, path in enumerate(order[start:start + PER_SHEET]):
            with Image.open(path) as im:
                thumb = ImageOps.contain(im.convert("RGB"), (CELL - 6, CELL - 26))
            x, y = (j % 4) * CELL, (j // 4) * CELL
            sheet.paste(thumb, (x + 3, y + 24))
            draw.text((x + 4, y + 2), f"#{start + j}", fill="red", font_size=18)
        sheet.save(out / f"sheet_{start // PER_SHEET:02d}.png")
    print(f"{len(order)} images on {(len(order) + PER_SHEET - 1) // PER_SHEET} sheets in {out}")
    return 0


def read_review(review: Path) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The key (index -> path) and every labels*.csv row by index; each index reviewed exactly once."""
    order = json.loads((review / ".key.json").read_text())
    rows: dict[int, dict[str, str]] = {}
    for file in sorted(review.glob("labels*.csv")):
        with open(file, newline="") as f:
            for r in csv.DictReader(f):
                i = int(r["idx"])
                if i in rows:
                    raise SystemExit(f"{file}: image #{i} reviewed twice")
                rows[i] = {k: r[k].strip().lower() for k in FIELDS[1:]}
    missing = sorted(set(range(len(order))) - set(rows))
    if missing:
        raise SystemExit(f"{len(missing)} images not reviewed, e.g. #{missing[0]}")
    return order, rows


def subgroup(labels: np.ndarray, prob: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n, pos = int(mask.sum()), int(labels[mask].sum())
    auc = float(roc_auc_score(labels[mask], prob[mask])) if 0 < pos < n else None
    return {"n": n, "fractured": pos, "roc_auc": auc}


def score(two: Path, review: Path, models: list[Path]) -> dict[str, Any]:
    order, rows = read_review(review)
    paths, labels_all, _ = site_locked(two)
    label_of = {str(p): y for p, y in zip(paths, labels_all, strict=True)}
    labels = np.array([label_of[p] for p in order])
    seen = [rows[i] for i in range(len(order))]

    def has(field: str, *values: str) -> np.ndarray:
        return np.array([r[field] in values for r in seen])

    groups = {  # each subgroup's mask, made once for every model
        "all": np.ones(len(order), dtype=bool),
        "no cast, splint or metal seen": ~has("immob", "y") & ~has("metal", "y"),
        "neither, nor unsure, nor a panel": has("immob", "n") & has("metal", "n") & has("panel", "n"),
        "metal seen": has("metal", "y"),
        "cast or splint seen": has("immob", "y"),
        **{f"region: {region}": has("region", region) for region in sorted({r["region"] for r in seen})},
    }
    report: dict[str, Any] = {"n": len(order), "prevalence": {}, "models": {}}
    for field in ("immob", "metal", "panel"):
        report["prevalence"][field] = {
            cls: {"y": int((has(field, "y") & (labels == c)).sum()),
                  "u": int((has(field, "u") & (labels == c)).sum()), "of": int((labels == c).sum())}
            for cls, c in (("fractured", 1), ("not fractured", 0))}
    images = [load_gray(Path(p)) for p in order]
    if any(im is None for im in images):
        raise SystemExit("a locked image does not decode")
    for model in models:
        predictor = Predictor.from_file(model, device=torch.device("cpu"))
        prob, _ = _scores(predictor, images, AUDIT[0])  # type: ignore[arg-type]
        rank = np.argsort(-prob)
        top = [i for i in rank if labels[i] == 0][:32]
        report["models"][str(model)] = {
            "groups": {name: subgroup(labels, prob, mask) for name, mask in groups.items()},
            "top32_negatives": {"cast or splint": sum(seen[i]["immob"] == "y" for i in top),
                                "metal": sum(seen[i]["metal"] == "y" for i in top)}}
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['n']} locked images of the second site, reviewed blind")
    print("\n| seen | fractured: yes (unsure) | not fractured: yes (unsure) |\n|---|---|---|")
    names = {"immob": "cast or splint", "metal": "orthopaedic metal", "panel": "multi-view panel"}
    for field, per in report["prevalence"].items():
        f, nf = per["fractured"], per["not fractured"]
        print(f"| {names[field]} | {f['y']} ({f['u']}) of {f['of']} | {nf['y']} ({nf['u']}) of {nf['of']} |")
    models = list(report["models"])
    print("\n| subgroup | images (fractured) | " + " | ".join(Path(m).parent.name for m in models) + " |")
    print("|---|---|" + "---|" * len(models))
    first = report["models"][models[0]]["groups"]
    for name, g in first.items():
        aucs = [report["models"][m]["groups"][name]["roc_auc"] for m in models]
        print(f"| {name} | {g['n']} ({g['fractured']}) | "
              + " | ".join("-" if a is None else f"{a:.3f}" for a in aucs) + " |")
    for m in models:
        t = report["models"][m]["top32_negatives"]
        print(f"{Path(m).parent.name}: of the 32 not-fractured images scoring highest, {t['cast or splint']} show a "
              f"cast or splint and {t['metal']} metal")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sheets")
    s.add_argument("--two", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("score")
    c.add_argument("--two", type=Path, required=True)
    c.add_argument("--review", type=Path, required=True)
    c.add_argument("--model", type=Path, action="append", required=True)
    c.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.command == "sheets":
        return make_sheets(args.two, args.out, args.seed)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    report = score(args.two, args.review, args.model)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
