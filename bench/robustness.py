"""The robustness and shortcut audit: how models hold under another department's acquisition, and where they look.

    .venv/bin/python scripts/two_sources.py /tmp/two            # both sources laid out, the site's locked part
    .venv/bin/python bench/robustness.py --two /tmp/two         # release-1 and two-site-1
    .venv/bin/python bench/robustness.py --two /tmp/two --model A.pt --model B.pt --markdown out.md --json out.json
    .venv/bin/python bench/robustness.py --two /tmp/two --survey   # what the two sources hold (the ranges' basis)

Held-out images, the same for every model compared:
- first source: each model's own grouped test split, restricted to the first source's distinct images (the split
  rebuilt from the checkpoint's policy and seed over the data it was trained on: the first dataset alone, or the
  union of --two's spec.json), so none of them, nor a near duplicate, was trained on by that model (models trained
  on the same data and split seed share it: two-site-1 and the models of the acquisition recipe); --first common
  takes instead the images every model given holds out (fewer: 105 for release-1 and two-site-1);
- second source: its locked evaluation part (scripts/two_sources.py: the product's grouped split, a fifth, seed 0),
  never trained on.
For each model and each source, every change of trainer.acquisition.AUDIT applied to the images at their own
resolution (at most 1024 px on the long side), then served as the worker serves it (squashed to the input, the
checkpoint's views, threshold and detector): ROC-AUC, sensitivity, specificity and the share flagged, and the three
figures among the images not flagged. Then the heatmap audit on the second source's locked fractured images with
boxes (trainer.robustness.heatmap_audit), and the made-up non-X-rays of bench/trust.py (still flagged?).
Prints Markdown tables; the last line is one JSON object with every figure. --figures DIR draws heatmaps of the
site's fractured images with their boxes (not committed: the dataset's README forbids committing derived images).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from trust import made_up  # noqa: E402

from fracture.ml.checkpoint import read_payload  # noqa: E402
from fracture.ml.gradcam import composite, heatmap  # noqa: E402
from fracture.ml.inference import Predictor  # noqa: E402
from fracture.ml.preprocess import ImageError, PreprocessSpec, decode_gray, fit_input, to_uint8_tensor  # noqa: E402
from trainer.prepared_data import Prepared  # noqa: E402
from trainer.recalibrate import RecalibrateError, checkpoint_data  # noqa: E402
from trainer.robustness import AUDIT_HEADER, acquisition_audit, heatmap_audit, render_rows, worst  # noqa: E402

SITE = REPO.parent / "shared" / "datasets" / "bone-fracture-roboflow-site"
RELEASE = REPO / "fracture" / "release" / "model.pt"
TWO_SITE = REPO / "fracture" / "release" / "two-site" / "model.pt"
MAX_SIDE = 1024
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "fracture-bench-cache"


def load_gray(path: Path) -> Image.Image | None:
    try:
        gray = decode_gray(path, 512)
    except ImageError:
        return None
    gray.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
    return gray


def first_held_out(models: list[Path], two: Path, packed: Path | None = None,
                   init: Path | None = None, split: str = "test") -> list[list[tuple[Path, float]]]:
    """Per model, (path, label) of the first source's distinct images in its own grouped test split (for a model
    trained on `packed`, scripts/device_data.py's copy of the same split, the originals of its test images; for a
    model trained on none of the first source, `init`'s: the checkpoint it was fine-tuned from, whose training is all
    it saw of the first source). `split="train"`: its training images instead, for its training fit."""
    first = (two / "first").resolve()
    out = []
    for path in models:
        data, original = _held_out_data(read_payload(path), two, packed, init)
        mine = []
        for r in data.split_index[split]:
            md5 = data.row_md5[r]
            file = original.get(str(data.paths[md5].resolve()), data.paths[md5])
            if first in file.resolve().parents:
                mine.append((md5, file, float(data.labels[r])))
        print(f"{path}: {len(mine)} first-source {split} images", file=sys.stderr)
        out.append([(p, y) for _, p, y in sorted(mine)])
    return out


def _held_out_data(payload: dict[str, Any], two: Path, packed: Path | None,
                   init: Path | None) -> tuple[Prepared, dict[str, Path]]:
    """The data a checkpoint was trained on, split again as its training split it, and (for a model trained on
    `packed`) the original file of each re-encoded copy: the first source alone, else the union of --two's spec.json,
    else `init`'s (a fine-tune on the site alone), else `packed`'s."""
    spec = PreprocessSpec.from_dict(payload["preprocess"])
    try:
        return checkpoint_data(payload, spec, (two / "first").resolve(), cache_dir=CACHE), {}
    except RecalibrateError:
        pass
    try:
        return checkpoint_data(payload, spec, None, two / "spec.json", two / "locked.json", CACHE), {}
    except RecalibrateError:
        if init is None and packed is None:
            raise
    if init is not None:
        return _held_out_data(read_payload(init), two, packed, None)
    assert packed is not None
    # Trained on scripts/device_data.py's re-encoded copy: its test split, measured on the originals.
    original = {str((packed / k).resolve()): Path(v)
                for k, v in json.loads((packed / "originals.json").read_text()).items()}
    return checkpoint_data(payload, spec, None, packed / "spec.json", None, CACHE), original


def common_held_out(per_model: list[list[tuple[Path, float]]]) -> list[tuple[Path, float]]:
    """The images every model holds out."""
    keys = set.intersection(*({str(p) for p, _ in images} for images in per_model))
    return [(p, y) for p, y in per_model[0] if str(p) in keys]


def site_locked(two: Path) -> tuple[list[Path], np.ndarray, list[list[tuple[float, float, float, float]]]]:
    """The second site's locked evaluation part: paths, labels and each image's fracture boxes."""
    rels = json.loads((two / "site_parts.json").read_text())
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    with open(SITE / "boxes.csv", newline="") as f:
        for b in csv.DictReader(f):
            if b["class"] != "humerus":  # the bone, not a finding (the dataset's README)
                boxes[b["filename"]].append((float(b["x0"]), float(b["y0"]), float(b["x1"]), float(b["y1"])))
    paths = [two / "site" / r for r in rels]
    labels = np.array([1.0 if r.split("/")[1] == "fractured" else 0.0 for r in rels])
    return paths, labels, [boxes.get(Path(r).name, []) for r in rels]


def survey(two: Path) -> dict[str, Any]:
    """What the two sources hold: dark and white bands at the edges (rows or columns of mean grey level under 12 or
    over 243, from either side: padding, collimation, a dark background) and each image's mean grey level, at 256
    px, one file per name."""
    out: dict[str, Any] = {}
    for name, root in (("first source", two / "first"), ("second source", two / "site")):
        seen: set[str] = set()
        black, white, mean = [], [], []
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.name in seen:
                continue
            seen.add(p.name)
            try:
                a = np.asarray(decode_gray(p, 256).resize((256, 256)), dtype=np.float32)
            except ImageError:
                continue
            rows, cols = a.mean(1), a.mean(0)
            def band(line: np.ndarray, dark: bool) -> float:
                hit = line < 12 if dark else line > 243
                left = int(np.argmin(hit)) if not hit.all() else len(line)
                right = int(np.argmin(hit[::-1])) if not hit.all() else len(line)
                return max(left, right) / len(line)
            black.append(max(band(rows, True), band(cols, True)))
            white.append(max(band(rows, False), band(cols, False)))
            mean.append(a.mean())
        out[name] = {
            "images": len(mean),
            "black band (share of side) p50/p90/p99": np.percentile(black, [50, 90, 99]).round(3).tolist(),
            "share with a black band >= 5%": float(np.mean(np.array(black) >= 0.05)),
            "white band p90/p99": np.percentile(white, [90, 99]).round(3).tolist(),
            "mean grey level p5/p50/p95": np.percentile(mean, [5, 50, 95]).round(1).tolist(),
        }
    # The gamma that maps one source's median grey level to the other's, and the spread within each.
    for s in out.values():
        p5, p50, p95 = s["mean grey level p5/p50/p95"]
        s["gamma spanning p5..p95 around the median"] = [round(float(np.log(p95 / 255) / np.log(p50 / 255)), 2),
                                                         round(float(np.log(p5 / 255) / np.log(p50 / 255)), 2)]
    return out


def draw_figures(predictor: Predictor, images: list[Image.Image], boxes: list[list[tuple[float, ...]]],
                 out: Path, name: str, n: int = 12) -> Path:
    """A sheet (JPEG) of the served heatmaps of the first `n` fractured images, as the product overlays them, with
    their fracture boxes drawn in green and the map's maximum (what the pointing game scores) as a white cross."""
    tiles = []
    for im, bxs in list(zip(images, boxes, strict=True))[:n]:
        heat = heatmap(predictor.model, to_uint8_tensor(fit_input(im, predictor.spec)), predictor.spec,
                       predictor.device)
        tile = composite(im, heat)
        tile.thumbnail((256, 256))
        draw = ImageDraw.Draw(tile)
        w, h = tile.size
        for x0, y0, x1, y1 in bxs:
            draw.rectangle((x0 * w, y0 * h, x1 * w, y1 * h), outline=(0, 255, 0), width=2)
        if float(heat.sum()) > 0:  # an empty map points nowhere: no cross
            row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
            cx, cy, r = (col + 0.5) / heat.shape[1] * w, (row + 0.5) / heat.shape[0] * h, 7
            draw.line((cx - r, cy, cx + r, cy), fill=(255, 255, 255), width=2)
            draw.line((cx, cy - r, cx, cy + r), fill=(255, 255, 255), width=2)
        tiles.append(tile)
    sheet = Image.new("RGB", (256 * 6, 256 * ((len(tiles) + 5) // 6)))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 6) * 256 + (256 - t.width) // 2, (i // 6) * 256 + (256 - t.height) // 2))
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"heatmaps-{name}.jpg"
    sheet.save(dest, quality=88)
    return dest


def _pointing(heat: dict[str, Any]) -> str:
    """The pointing game's chance (the boxes' area) and reach (images where the map's cells can hit a box at all)."""
    return f"{_f(heat['pointing_chance'])}; {_f(heat.get('pointing_reach'))}"


def _reach_text(heat: dict[str, Any]) -> str:
    if heat.get("pointing_reach") is None:
        return "reach not measured"
    return (f"a {heat['map_cells']}x{heat['map_cells']} map can point into a box on "
            f"{_f(heat['pointing_reach'])} of them at most")


def summary(report: dict[str, Any]) -> str:
    """One row per model and source: unchanged, the worst change (among images not flagged), most flagged; then
    the heatmap audit and the made-up images."""
    lines = ["| model | images | n | unchanged: ROC-AUC / sens. / spec. | worst change, not flagged: ROC-AUC / "
             "sens. / spec. | most flagged | heatmap mass in boxes (area) | in outer tenth (area) | pointing game "
             "(chance; reach) | made-up flagged (noise / blank / photo / screenshot) | rows meeting the per-change "
             "target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in report["models"].items():
        heat, fakes = entry["heatmaps"], entry["made_up_flagged"]
        for i, (source, rows) in enumerate(entry["audit"].items()):
            none, w = rows[0], entry["worst"][source]
            extra = (f"{_f(heat['box_mass'])} ({_f(heat['box_area'])}) | {_f(heat['border_mass'])} "
                     f"({_f(heat['border_area'])}) | {_f(heat['pointing_game'])} ({_pointing(heat)}) | "
                     + " / ".join(_f(fakes[k]) for k in ("noise", "blank", "photo", "screenshot"))
                     if i == len(entry["audit"]) - 1 else " | | | ")
            lines.append(f"| {name} | {source} | {none['n']} | {_f(none['roc_auc'])} / {_f(none['sensitivity'])} / "
                         f"{_f(none['specificity'])} | {_f(w['roc_auc'])} / {_f(w['sensitivity'])} / "
                         f"{_f(w['specificity'])} | {_pct(w['flagged'])} | {extra} | "
                         f"{sum(map(meets_target, rows))} of {len(rows)} |")
    return "\n".join(lines)


def meets_target(row: dict[str, Any]) -> bool:
    """Whether one row of the audit meets issue 18's per-change target: at most 20% flagged and, among the images
    not flagged, ROC-AUC >= 0.98 with sensitivity and specificity >= 0.95."""
    kept = row["kept"] if row.get("kept") is not None else row
    figures = [float(v) for k in ("roc_auc", "sensitivity", "specificity") if (v := kept.get(k)) is not None]
    if len(figures) < 3:
        return False
    auc, sens, spec = figures
    return float(row.get("flagged") or 0.0) <= 0.20 and auc >= 0.98 and sens >= 0.95 and spec >= 0.95


def changes_table(report: dict[str, Any]) -> str:
    """Every change side by side: one column per model and source, each cell ROC-AUC, sensitivity / specificity
    and the share flagged (all images)."""
    columns = [(name, source) for name, entry in report["models"].items() for source in entry["audit"]]
    columns.sort(key=lambda c: list(report["models"][c[0]]["audit"]).index(c[1]))  # first source, then second
    head = "| change | " + " | ".join(f"{name}, {source.split(',')[0]}" for name, source in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    first = report["models"][columns[0][0]]["audit"][columns[0][1]]
    for i, row in enumerate(first):
        cells = []
        for name, source in columns:
            r = report["models"][name]["audit"][source][i]
            cells.append(f"{_f(r['roc_auc'])} {_f(r['sensitivity'])}/{_f(r['specificity'])} ({_pct(r['flagged'])})")
        lines.append(f"| {row['change']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * v:.0f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--two", type=Path, required=True, help="the folder scripts/two_sources.py wrote")
    p.add_argument("--model", action="append", type=Path,
                   help="checkpoint (repeatable; default: release-1, two-site-1)")
    p.add_argument("--name", action="append", help="a name per --model for the tables")
    p.add_argument("--limit", type=int, default=0, help="at most this many images per source (0: all)")
    p.add_argument("--first", choices=("own", "common"), default="own",
                   help="the first source's images: each model's own grouped test, or those all models hold out")
    p.add_argument("--heatmaps-only", action="store_true",
                   help="only the heatmap audit of the second source's locked fractured images (no acquisition audit)")
    p.add_argument("--packed", type=Path, default=None,
                   help="scripts/device_data.py's folder, for models trained on it (a GPU machine's runs)")
    p.add_argument("--first-of", type=Path, default=None,
                   help="for a model trained on none of the first source (a fine-tune on the site alone): the "
                        "checkpoint it was fine-tuned from, whose grouped test split gives its first-source images")
    p.add_argument("--survey", action="store_true", help="only measure what the two sources hold")
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--figures", type=Path, default=None, help="draw heatmaps with boxes here")
    p.add_argument("--from-json", action="append", type=Path, default=None,
                   help="print the side-by-side summary and per-change table of earlier runs' --json files "
                        "(measures nothing)")
    a = p.parse_args()
    if a.from_json:
        merged: dict[str, Any] = {"models": {}}
        for f in a.from_json:
            merged["models"].update(json.loads(f.read_text())["models"])
        print(summary(merged) + "\n\n" + changes_table(merged))
        return 0
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if a.survey:
        print(json.dumps(survey(a.two), indent=1))
        return 0
    models = a.model or [RELEASE, TWO_SITE]
    names = a.name or (["release-1", "two-site-1"] if not a.model else [m.parent.name for m in models])
    t0 = time.time()
    if a.heatmaps_only:
        return heatmaps_only(models, names, a.two, a.limit, a.figures)
    firsts = first_held_out(models, a.two, a.packed, a.first_of)
    if a.first == "common":
        firsts = [common_held_out(firsts)] * len(models)
    site_paths, site_y, site_boxes = site_locked(a.two)
    rng = np.random.default_rng(0)
    if a.limit:  # a seeded sample of each source (a quick look; the figures are for all)
        firsts = [[f[i] for i in sorted(rng.permutation(len(f))[:a.limit])] for f in firsts]
        pick = sorted(rng.permutation(len(site_paths))[:a.limit])
        site_paths, site_y, site_boxes = [site_paths[i] for i in pick], site_y[pick], [site_boxes[i] for i in pick]
    decoded: dict[str, Image.Image | None] = {}
    first_sources = []
    for first in firsts:
        ims, ys = [], []
        for path, label in first:
            if str(path) not in decoded:  # models trained on one split share their images: decode each once
                decoded[str(path)] = load_gray(path)
            im = decoded[str(path)]
            if im is not None:
                ims.append(im)
                ys.append(label)
        first_sources.append((ims, np.array(ys)))
    site_ims = [load_gray(path) for path in site_paths]
    keep = [i for i, im in enumerate(site_ims) if im is not None]
    site = ([site_ims[i] for i in keep], site_y[keep])
    fractured = [i for i in keep if site_y[i] == 1 and site_boxes[i]]
    first_name = ("first source, held out by every model" if a.first == "common"
                  else "first source, its own grouped test")
    print(f"images ready in {time.time() - t0:.0f}s: first source {[len(f[0]) for f in first_sources]}, second "
          f"source {len(site[0])}; {len(fractured)} fractured with boxes", file=sys.stderr)
    fakes = made_up(25)
    report: dict[str, Any] = {"first": a.first, "models": {}}
    lines: list[str] = []
    for path, name, first_source in zip(models, names, first_sources, strict=True):
        sources = {first_name: first_source, "second source, locked part": site}
        t1 = time.time()
        predictor = Predictor.from_file(path, device=torch.device("cpu"))
        entry: dict[str, Any] = {"checkpoint": str(path), "audit": {}, "worst": {}}
        for source, (images, y) in sources.items():
            rows = acquisition_audit(predictor, images, y)
            entry["audit"][source] = rows
            entry["worst"][source] = worst(rows)
            lines += [f"\n**{name}: {source}**\n", *AUDIT_HEADER, *render_rows(rows)]
        heat = heatmap_audit(predictor, [site_ims[i] for i in fractured], [site_boxes[i] for i in fractured])  # type: ignore[misc]
        entry["heatmaps"] = heat
        flagged = {}
        for kind, fake in fakes.items():
            u8 = torch.stack([to_uint8_tensor(fit_input(im.convert("L"), predictor.spec)) for im in fake])
            _, ood = predictor.scores(u8)
            flagged[kind] = None if ood is None else float(np.mean(ood >= 1))
        entry["made_up_flagged"] = flagged
        lines.append(f"\n{name}: heatmaps of {heat['n']} fractured images of the second source's locked part: "
                     f"{_f(heat['box_mass'])} of the map's mass in the boxes (they cover {_f(heat['box_area'])} of "
                     f"the image), {_f(heat['border_mass'])} in the outer tenth (which covers "
                     f"{_f(heat['border_area'])}); pointing game {_f(heat['pointing_game'])} (chance "
                     f"{_f(heat['pointing_chance'])}; {_reach_text(heat)}). Made-up images flagged: "
                     + ", ".join(f"{k} {_f(v)}" for k, v in flagged.items()))
        if a.figures:
            dest = draw_figures(predictor, [site_ims[i] for i in fractured],  # type: ignore[misc]
                                [site_boxes[i] for i in fractured], a.figures, name)
            lines.append(f"(heatmaps drawn: {dest})")
        entry["seconds"] = time.time() - t1
        report["models"][name] = entry
        print(f"{name}: {entry['seconds']:.0f} s", file=sys.stderr)
    text = summary(report) + "\n" + "\n".join(lines)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report, default=float))
    return 0


def heatmaps_only(models: list[Path], names: list[str], two: Path, limit: int = 0, figures: Path | None = None) -> int:
    """The served heatmaps of the second source's locked fractured images against their boxes, per model (and a
    sheet of the first twelve per model in `figures`)."""
    paths, y, boxes = site_locked(two)
    fractured = [i for i in range(len(paths)) if y[i] == 1 and boxes[i]]
    if limit:
        fractured = fractured[:limit]
    images = [load_gray(paths[i]) for i in fractured]
    keep = [k for k, im in enumerate(images) if im is not None]
    rows = ["| model | n | heatmap mass in boxes (area) | in outer tenth (area) | pointing game (chance; reach) "
            "| empty maps |",
            "|---|---|---|---|---|---|"]
    report = {}
    for path, name in zip(models, names, strict=True):
        predictor = Predictor.from_file(path, device=torch.device("cpu"))
        heat = heatmap_audit(predictor, [images[k] for k in keep], [boxes[fractured[k]] for k in keep])  # type: ignore[misc]
        report[name] = heat
        rows.append(f"| {name} | {heat['n']} | {_f(heat['box_mass'])} ({_f(heat['box_area'])}) | "
                    f"{_f(heat['border_mass'])} ({_f(heat['border_area'])}) | {_f(heat['pointing_game'])} "
                    f"({_pointing(heat)}) | {heat['empty_maps']} |")
        print(rows[-1], file=sys.stderr)
        if figures:
            dest = draw_figures(predictor, [images[k] for k in keep], [boxes[fractured[k]] for k in keep],  # type: ignore[misc]
                                figures, name)
            print(f"heatmaps drawn: {dest}", file=sys.stderr)
    print("\n".join(rows))
    print(json.dumps(report, default=float))
    return 0


def _f(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
