"""GPU worker benchmark (issue 23): one prepared run for one device call, that chooses BATCH_SIZE, DECODER and
DECODE_THREADS for a GPU worker aiming at >= 5,000 images/s end to end.

    PYTHONPATH=. python bench/gpu.py --images DIR            # on a lent GPU (< 6 minutes on an H100/H200)
    PYTHONPATH=. python bench/gpu.py --smoke --images DIR    # on a CPU: tiny sizes, the same code (< 1 minute)

DIR is a folder of real images (or a .tar of one, unpacked to a temporary folder); without --images the shared
dataset is materialized with its own script when it is there, and nothing is made up when it is not. Measures, with
the release model (fracture/release/model.pt):
- the network alone (normalisation, test-time views, detector) on uint8 batches already on the device, per batch
  size x precision (float32; bfloat16, which a GPU serves under);
- decoding alone: the Pillow path (as the worker's decode threads run it) at 1..16 threads, and the torchvision path
  (threads read and sniff, one batched decode + resize on the device per batch);
- Predictor.predict end to end over the files with each decoder at the best batch size, thumbnails on (the served
  default) and off, and whether the two decoders' decisions agree;
then prints the defaults it recommends, a table, and one JSON line (also written to $OUT/gpu.json when $OUT is set).
Imports only torch, torchvision, numpy, PIL and the project: the device machine cannot install anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.inference import Predictor, device_defaults  # noqa: E402
from fracture.ml.preprocess import forward_views, forward_views_features, normalize  # noqa: E402

MODEL = REPO / "fracture" / "release" / "model.pt"
DATASET = Path(os.environ.get("FRACTURE_DATASET", REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".dcm")


def find_images(images: Path | None, workdir: Path) -> list[Path]:
    """The files to classify: a folder, a .tar of one, or the shared dataset materialized; [] when there is none."""
    if images is not None and images.is_file() and tarfile.is_tarfile(images):
        dest = workdir / "images"
        with tarfile.open(images) as tar:
            try:
                tar.extractall(dest, filter="data")  # no absolute paths, links out or devices
            except TypeError:  # a Python without extraction filters (before 3.11.4): the tar is the bench's own
                tar.extractall(dest)
        images = dest
    if images is None and (DATASET / "materialize").is_file():
        images = workdir / "dataset"
        subprocess.run([sys.executable, str(DATASET / "materialize"), str(images)], check=True, capture_output=True)
    if images is None or not images.is_dir():
        return []
    return sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], int], device: torch.device, seconds: float) -> float:
    """Items per second of `fn` (which returns how many it did), run for about `seconds` after one warm-up call."""
    fn()
    sync(device)
    done, t0 = 0, time.perf_counter()
    while True:
        done += fn()
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


@torch.inference_mode()
def network_ips(predictor: Predictor, batch: int, precision: str, seconds: float) -> float:
    """The network as Predictor.scores runs it, on a uint8 batch already on the device, under `precision`."""
    s, device, spec = predictor.spec.image_size, predictor.device, predictor.spec
    x = torch.randint(0, 256, (batch, 1, s, s), dtype=torch.uint8, device=device)

    def run() -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            z = normalize(x, spec)
            if predictor.detector is None:
                logits = forward_views(predictor.model, z, spec.views)
            else:
                logits, features = forward_views_features(predictor.model, z, spec.views)
                predictor.detector.score(features.float())
        torch.sigmoid(logits.float())
        return batch

    return rate(run, device, seconds)


def pillow_decode_ips(predictor: Predictor, files: list[Path], threads: int, thumbnails: bool) -> float:
    """The Pillow path as the worker's decode threads run it (decode, thumbnail, resize), over `files` once."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda f: predictor._decode_timed(f, thumbnails), files):
            pass
    return len(files) / (time.perf_counter() - t0)


def torchvision_decode_ips(predictor: Predictor, files: list[Path], threads: int, thumbnails: bool) -> float:
    """The torchvision path without the network: threads read and sniff, then per batch one decode + resize."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(threads) as thumbs:
        read = list(pool.map(lambda f: predictor._read(f, thumbnails)[0], files))
        for start in range(0, len(read), predictor.batch_size):
            part = read[start:start + predictor.batch_size]
            pending = [(i, (item if not isinstance(item, tuple) else item[0]), None) for i, item in enumerate(part)
                       if not isinstance(item, str)]
            predictor._prepare(pending, thumbnails, None, thumbs)  # type: ignore[arg-type]
    sync(predictor.device)
    return len(files) / (time.perf_counter() - t0)


def end_to_end(predictor: Predictor, files: list[Path], thumbnails: bool) -> tuple[float, list[str | None]]:
    """Predictor.predict over `files`: images/s and each file's decision (None for an error row)."""
    predictor.warm_up()
    t0 = time.perf_counter()
    labels = [p.label for p in predictor.predict(files, thumbnails=thumbnails)]
    return len(files) / (time.perf_counter() - t0), labels


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=None, help="a folder of real images, or a .tar of one")
    p.add_argument("--n", type=int, default=None, help="files classified end to end (cycling through the folder)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, torchvision decoding there too")
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu (--smoke: cpu)")
    a = p.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(a.device or ("cpu" if a.smoke or not torch.cuda.is_available() else "cuda"))
    cores = os.cpu_count() or 1
    if a.smoke:
        batches, threads_list, seconds, n, decode_n = (8, 16), (1, 2), 0.3, a.n or 24, 16
    else:
        batches, threads_list, seconds = (64, 128, 256, 512, 1024), (1, 2, 4, 8, 16), 2.0
        n, decode_n = a.n or 20_000, 3000
    threads_list = tuple(t for t in threads_list if t <= max(cores, threads_list[0]))
    with tempfile.TemporaryDirectory(prefix="fracture-gpu-bench-") as tmp:
        found = find_images(a.images, Path(tmp))
        if not found:
            sys.exit("bench/gpu.py: no images (pass --images DIR or a .tar; the shared dataset is not here either)")
        files = [found[i % len(found)] for i in range(n)]
        decode_files = files[:decode_n]
        result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                  "cpus": cores, "smoke": a.smoke, "distinct_files": len(found), "images": n,
                                  "torch": torch.__version__}
        base = Predictor.from_file(MODEL, device, decoder="pillow")
        result["views"] = base.spec.views

        network: dict[str, dict[str, float]] = {}
        for precision in ("float32", "bfloat16"):
            network[precision] = {str(b): round(network_ips(base, b, precision, seconds)) for b in batches}
        result["network_ips"] = network
        served = network["bfloat16" if device.type == "cuda" or base.spec.precision == "bfloat16" else "float32"]
        best = max(served.values())
        batch = next(b for b in batches if served[str(b)] >= 0.9 * best)  # the smallest within 10% of the best
        result["best_batch"] = batch

        pillow = Predictor.from_file(MODEL, device, batch, decoder="pillow")
        tv = Predictor.from_file(MODEL, device, batch, decoder="torchvision")
        decode: dict[str, dict[str, float]] = {"pillow": {}, "torchvision": {}}
        for t in threads_list:
            decode["pillow"][str(t)] = round(pillow_decode_ips(pillow, decode_files, t, True))
        tv.warm_up()
        for t in (threads_list[0], threads_list[-1]):
            decode["torchvision"][str(t)] = round(torchvision_decode_ips(tv, decode_files, t, True))
        result["decode_ips_with_thumbnails"] = decode
        pillow_threads = max(threads_list, key=lambda t: decode["pillow"][str(t)])

        e2e: dict[str, dict[str, float]] = {}
        labels: dict[str, list[str | None]] = {}
        for name, predictor in (("pillow", pillow), ("torchvision", tv)):
            predictor.decode_threads = max(threads_list)
            e2e[name] = {}
            for thumbnails in (True, False):
                ips, labels[name] = end_to_end(predictor, files, thumbnails)
                e2e[name]["thumbnails" if thumbnails else "no_thumbnails"] = round(ips)
        result["end_to_end_ips"] = e2e
        both = [(x, y) for x, y in zip(labels["pillow"], labels["torchvision"], strict=True) if x and y]
        result["decisions_agree"] = f"{sum(x == y for x, y in both)}/{len(both)}"
        result["errors_agree"] = [x is None for x in labels["pillow"]] == [y is None for y in labels["torchvision"]]
        decoder = max(e2e, key=lambda d: e2e[d]["thumbnails"])
        result["recommended"] = {"BATCH_SIZE": batch, "DECODER": decoder,
                                 "DECODE_THREADS": max(threads_list) if decoder == "torchvision" else pillow_threads}
        result["device_defaults"] = dict(zip(("BATCH_SIZE", "DECODE_THREADS"), device_defaults(device), strict=True))
        result["target_5000_met"] = e2e[decoder]["thumbnails"] >= 5000
        result["seconds"] = round(time.perf_counter() - started, 1)

    print_table(result, batches)
    line = json.dumps(result)
    print(line)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(line + "\n")
    return result


def print_table(r: dict[str, Any], batches: tuple[int, ...]) -> None:
    print(f"device {r['device']}, {r['cpus']} CPUs, {r['distinct_files']} distinct files, {r['images']} classified, "
          f"views {r['views']}")
    print("network images/s   " + "".join(f"{b:>9}" for b in batches))
    for precision, row in r["network_ips"].items():
        print(f"  {precision:<17}" + "".join(f"{row[str(b)]:>9}" for b in batches))
    for name, row in r["decode_ips_with_thumbnails"].items():
        print(f"decode {name:<12} " + "  ".join(f"{t} threads: {v}/s" for t, v in row.items()))
    for name, row in r["end_to_end_ips"].items():
        print(f"end to end {name:<12} batch {r['best_batch']}: with thumbnails {row['thumbnails']}/s, "
              f"without {row['no_thumbnails']}/s")
    print(f"decisions agree {r['decisions_agree']}, error rows agree {r['errors_agree']}")
    print(f"recommended {r['recommended']} (the device's defaults now: {r['device_defaults']}); "
          f">= 5,000 images/s: {r['target_5000_met']}; {r['seconds']} s")


if __name__ == "__main__":
    main()
