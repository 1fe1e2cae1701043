"""Pack real X-rays, as the dataset holds them (JPEG, PNG, GIF; every size), for bench/gpu.py on a lent GPU machine.

    .venv/bin/python scripts/gpu_bench_images.py            # .devbench/images.tar, at most 48 MB
    # then, with the device tool: carry [".devbench"], command
    #   PYTHONPATH=. timeout 420 python bench/gpu.py --images .devbench/images.tar

The device machine gets a copy of the working tree and the paths carried with it (64 MiB in all), not the shared
dataset. The files are a random sample (seed 0) of the shared dataset's distinct images, kept byte for byte (the
decoders must meet the real formats and sizes, the large PNGs included), until the next would pass --max-mb; they
stay out of git (.gitignore: /.devbench/), as the dataset's README asks.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--out", type=Path, default=REPO / ".devbench" / "images.tar")
    p.add_argument("--max-mb", type=float, default=48.0, help="the tar's budget (the device tool carries 64 MiB)")
    a = p.parse_args()
    with open(a.dataset / "manifest.csv", newline="") as f:
        rows = {row["md5"]: row for row in csv.DictReader(f)}  # each distinct image once
    md5s = sorted(rows)
    random.Random(0).shuffle(md5s)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    budget, used, count = a.max_mb * 1e6, 0, 0
    with tarfile.open(a.out, "w") as tar:
        for md5 in md5s:
            blob = a.dataset / "blobs" / md5
            size = blob.stat().st_size
            if used + size > budget:
                continue  # a smaller one may still fit
            suffix = Path(rows[md5]["filename"]).suffix.lower() or ".img"
            tar.add(blob, arcname=f"images/{count:05d}{suffix}")
            used, count = used + size, count + 1
    if count == 0:
        sys.exit(f"no image fits in {a.max_mb} MB")
    print(f"{count} images, {used / 1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
