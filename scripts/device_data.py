"""Pack the two-source training data small enough to travel to a lent GPU machine, split as the product splits it.

    .venv/bin/python scripts/two_sources.py /tmp/two
    .venv/bin/python scripts/device_data.py /tmp/two .devdata

The union of the two sources (the first whole, the second site's training part, its locked part left out) is
split here, on the original files, exactly as two-site-1 and robust-1 were (grouped by near duplicate, seed 0), and
each distinct image is written once, re-encoded as an 8-bit grayscale JPEG no larger than --max-side, into
OUT/{first,site}/{train,val,test}/{label}/: a layout the trainer reads with `--split given`, so the GPU run trains,
selects and tests on the same images as the CPU runs. Also written: spec.json (the --data-spec) and spec.json.in
(the same with its roots as @ROOT@/first and @ROOT@/site), boxes.csv (the second site's fracture boxes, keyed by
the re-encoded files' MD5s, for --boxes) and originals.json (each written file's original, so that held-out
figures are measured on the originals: bench/robustness.py --packed).

    tar czf .devpack/data.tgz .devdata   # one 27 MB file travels where 6,252 small ones do not (scripts/gpu_robust.sh)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.preprocess import PreprocessSpec, decode_gray  # noqa: E402
from trainer.box_supervision import read_boxes  # noqa: E402
from trainer.prepared_data import prepare_data  # noqa: E402
from trainer.train import get_args_parser  # noqa: E402

SITE = REPO.parent / "shared" / "datasets" / "bone-fracture-roboflow-site"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("two", type=Path, help="the folder scripts/two_sources.py wrote")
    p.add_argument("out", type=Path)
    p.add_argument("--max-side", type=int, default=288)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--seed", type=int, default=0, help="the grouped split's seed (two-site-1's: 0)")
    a = p.parse_args()
    two, out = a.two.resolve(), a.out.resolve()
    args = get_args_parser().parse_args(["--data-spec", str(two / "spec.json"), "--locked", str(two / "locked.json"),
                                         "--out", str(out), "--split", "grouped", "--seed", str(a.seed)])
    data = prepare_data(args, PreprocessSpec(image_size=128), Path("/tmp/fracture-bench-cache"))
    split_of = {data.row_md5[r]: name for name, rows in data.split_index.items() for r in rows.tolist()}
    boxes = read_boxes(SITE / "boxes.csv")
    originals: dict[str, str] = {}
    new_boxes: list[list[object]] = []
    for md5, split in sorted(split_of.items()):
        path = data.paths[md5]
        source = "first" if (two / "first") in path.resolve().parents else "site"
        label = data.report.label_of[md5]
        gray = decode_gray(path, a.max_side)
        gray.thumbnail((a.max_side, a.max_side))
        buf = io.BytesIO()
        gray.save(buf, format="JPEG", quality=a.quality)
        rel = Path(source) / split / label / f"{md5}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(buf.getvalue())
        originals[str(rel)] = str(path)
        for box in boxes.get(md5, []):
            new_boxes.append([hashlib.md5(buf.getvalue()).hexdigest(), *box])
    (out / "originals.json").write_text(json.dumps(originals, indent=0))
    spec = json.dumps([{"name": "multiregion", "root": "@ROOT@/first"},
                       {"name": "site-2 (training part)", "root": "@ROOT@/site"}])
    (out / "spec.json.in").write_text(spec)  # for the GPU machine, where the checkout lies elsewhere
    (out / "spec.json").write_text(spec.replace("@ROOT@", str(out)))
    with open(out / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["md5", "x0", "y0", "x1", "y1"])
        w.writerows(new_boxes)
    sizes = {s: sum(1 for v in split_of.values() if v == s) for s in ("train", "val", "test")}
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{len(split_of)} distinct images {sizes}, {len(new_boxes)} boxes, {total / 1e6:.1f} MB -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
