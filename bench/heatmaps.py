"""Which attribution shows where the served network looked: deletion and insertion on real fractured X-rays.

    .venv/bin/python bench/heatmaps.py                  # the release checkpoint, 30 images
    .venv/bin/python bench/heatmaps.py --model A.pt --images 60 --markdown out.md

Each candidate ranks the pixels of the network's input (128 x 128 for the release model) by its map. Deletion
replaces the most-attributed pixels by the image's mean value, 2% of them first and up to all, and records the served
probability (the mean logit over the checkpoint's test-time views) at each step; insertion starts from the image
filled with its mean and puts the most-attributed pixels back. The area under each curve is the mean over the
images: a faithful map makes the probability fall fast when its pixels go (deletion, lower is better) and rise
fast when they come back (insertion, higher is better). Images: distinct fractured X-rays of the first dataset's
test and val splits that the model calls fractured, in MD5 order. The served map is ranked as the overlay shows it:
its positive evidence on the one absolute scale (gradcam.shown), so that pixels at full colour (or with none) tie.

The scale: on as many not-fractured X-rays of the same splits that the model calls not fractured with probability
below 0.05, the shown map's peak and mean against those of the fractured ones, on the one scale and as a map scaled
to its own maximum would show them. Prints a table with the time per heatmap on this machine's CPU; the last line is
JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.gradcam import EVIDENCE_SCALE, heatmap, layer_maps, shown, target_layer  # noqa: E402
from fracture.ml.inference import Predictor  # noqa: E402
from fracture.ml.preprocess import forward_views, load_u8, normalize, views_of  # noqa: E402

FIRST = Path(os.environ.get("FRACTURE_DATASET", REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"))
# The share of pixels deleted (or inserted) at each point: dense where the top of the map is.
FRACTIONS = np.array([0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0])
Method = Callable[[torch.nn.Module, torch.Tensor, str], torch.Tensor]


def fractured_images(root: Path, n: int, label: str = "fractured") -> list[Path]:
    """Distinct images of `label` of the test and val splits, in MD5 order (more than n: some are not called so)."""
    with open(root / "manifest.csv", newline="") as f:
        rows = csv.DictReader(f)
        md5s = sorted({r["md5"] for r in rows if r["split"] in ("test", "val") and r["label"] == label})
    return [root / "blobs" / m for m in md5s[: n * 2]]


def gradcam(block: int, plusplus: bool = False, single_view: bool = False, as_shown: bool = False) -> Method:
    def run(model: torch.nn.Module, x: torch.Tensor, views: str) -> torch.Tensor:
        maps = layer_maps(model, x, views, target_layer(model, block), plusplus)
        heat = maps[0] if single_view else maps.mean(0)
        return torch.from_numpy(shown(heat.clamp_min(0).numpy())) if as_shown else heat

    return run


def grad_x_input(model: torch.nn.Module, x: torch.Tensor, views: str) -> torch.Tensor:
    """Gradient times input of the served score, summed over channels (one backward pass through the views)."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = forward_views(model, x, views)
        (g,) = torch.autograd.grad(logits.sum(), x)
    return (g * x).detach().sum(1)[0]


def random_map(model: torch.nn.Module, x: torch.Tensor, views: str) -> torch.Tensor:
    """A baseline: no information at all (smooth random blobs)."""
    gen = torch.Generator().manual_seed(int(x.abs().sum() * 1000) % 2**31)
    return F.interpolate(torch.rand(1, 1, 8, 8, generator=gen), size=x.shape[-2:], mode="bilinear")[0, 0]


CANDIDATES: dict[str, Method] = {
    "Grad-CAM, last block (4x4), 8 views, as shown on the one scale [served]": gradcam(-1, as_shown=True),
    "Grad-CAM, last block (4x4), 8 views, signed": gradcam(-1),
    "Grad-CAM, block -2 (8x8), 8 views, signed [served before]": gradcam(-2),
    "Grad-CAM, block -2 (8x8), 8 views, as shown on the one scale": gradcam(-2, as_shown=True),
    "Grad-CAM++, block -2 (8x8), 8 views": gradcam(-2, plusplus=True),
    "Grad-CAM, block -2, identity view only": gradcam(-2, single_view=True),
    "gradient x input, 8 views": grad_x_input,
    "random (baseline)": random_map,
}


def filled(x: torch.Tensor) -> torch.Tensor:
    """What a deleted pixel becomes: the image's own mean. A constant image (black or mid-grey) is called fractured
    with probability 1.00 by the release model, and a blurred copy 0.7 on average; the mean keeps the brightness and
    takes the probability down to 0.4 on average, so the curves have room to fall."""
    return x.mean((2, 3), keepdim=True).expand_as(x)


@torch.inference_mode()
def probabilities(model: torch.nn.Module, batch: torch.Tensor, views: str) -> np.ndarray:
    return torch.sigmoid(forward_views(model, batch, views)).numpy()


def curves(model: torch.nn.Module, x: torch.Tensor, heat: np.ndarray, views: str,
           ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The served probability at each of FRACTIONS as the top pixels go (deletion) and come back (insertion);
    `ends` is the probability of the image and of the image with every pixel gone, the same for every method."""
    order = np.argsort(-(heat.ravel() + np.random.default_rng(0).uniform(0, 1e-6, heat.size)), kind="stable")
    ranks = torch.empty(heat.size, dtype=torch.long)
    ranks[torch.from_numpy(order.copy())] = torch.arange(heat.size)
    ranks = ranks.view(1, 1, *heat.shape)
    inner = FRACTIONS[1:-1]
    gone = torch.cat([(ranks < round(heat.size * f)).float() for f in inner])  # 1 where a top pixel is
    base = filled(x)
    probs = probabilities(model, torch.cat([x * (1 - gone) + base * gone, base * (1 - gone) + x * gone]), views)
    deletion = np.concatenate([ends[:1], probs[: len(inner)], ends[1:]])
    insertion = np.concatenate([ends[1:], probs[len(inner):], ends[:1]])
    return deletion, insertion


def auc(y: np.ndarray) -> float:
    return float(np.trapezoid(y, FRACTIONS))


def scale_check(model: torch.nn.Module, predictor: Predictor, positives: list[torch.Tensor],
                negatives: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """The served map's peak and mean as shown (0..1) on fractured images called fractured and on confident
    negatives, on the one scale and scaled to each map's own maximum (what the overlay did before), with the peak
    evidence in logit units."""
    out: dict[str, dict[str, float]] = {}
    for name, images in (("fractured", positives), ("confident negatives", negatives)):
        peaks, means, own, raw = [], [], [], []
        for u8 in images:
            heat = heatmap(model, u8, predictor.spec)
            on_scale = shown(heat)
            top = float(heat.max())
            peaks.append(float(on_scale.max()))
            means.append(float(on_scale.mean()))
            own.append(float((heat / top).mean()) if top > 0 else 0.0)
            raw.append(top)
        out[name] = {"n": len(images), "peak_logit_density_median": float(np.median(raw)),
                     "peak_shown": float(np.mean(peaks)), "mean_shown": float(np.mean(means)),
                     "mean_shown_own_max": float(np.mean(own)),
                     "peak_shown_own_max": float(np.mean([1.0 if r > 0 else 0.0 for r in raw]))}
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "fracture" / "release" / "model.pt"))
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    predictor = Predictor.from_file(args.model, torch.device("cpu"))
    model, spec = predictor.model, predictor.spec

    inputs: list[torch.Tensor] = []
    positives: list[torch.Tensor] = []
    for path in fractured_images(FIRST, args.images):
        u8 = load_u8(path, spec)
        if predictor.probabilities(u8[None])[0] >= predictor.ckpt.threshold and len(inputs) < args.images:
            inputs.append(normalize(u8[None], spec))
            positives.append(u8)
    negatives: list[torch.Tensor] = []
    for path in fractured_images(FIRST, args.images, "not fractured"):
        try:
            u8 = load_u8(path, spec)
        except ValueError:
            continue  # the dataset's truncated files
        if predictor.probabilities(u8[None])[0] < 0.05 and len(negatives) < args.images:
            negatives.append(u8)
    scale = scale_check(model, predictor, positives, negatives)
    for name, r in scale.items():
        print(f"{name} ({r['n']}): peak evidence (median) {r['peak_logit_density_median']:.1f} logits per image "
              f"area; on the one scale ({EVIDENCE_SCALE:g}) peak {r['peak_shown']:.3f}, mean {r['mean_shown']:.3f}; "
              f"scaled to its own maximum peak {r['peak_shown_own_max']:.3f}, mean {r['mean_shown_own_max']:.3f}",
              flush=True)
    print(f"{len(inputs)} fractured images called fractured; {len(views_of(inputs[0], spec.views))} views; "
          f"{torch.get_num_threads()} CPU threads", flush=True)

    ends = [probabilities(model, torch.cat([x, filled(x)]), spec.views) for x in inputs]
    print(f"served probability: images {np.mean([e[0] for e in ends]):.3f}, every pixel filled with the image's "
          f"mean {np.mean([e[1] for e in ends]):.3f}", flush=True)
    for method in CANDIDATES.values():  # warm up first: the first backward pass sets up its kernels (0.4 s)
        method(model, inputs[0], spec.views)
    rows: list[dict[str, object]] = []
    per_image: dict[str, np.ndarray] = {}
    for name, method in CANDIDATES.items():
        dels, ins, seconds = [], [], 0.0
        for n, x in enumerate(inputs):
            start = time.perf_counter()
            heat = method(model, x, spec.views).numpy()  # ranked signed: the order below zero counts too
            seconds += time.perf_counter() - start
            d, i = curves(model, x, heat, spec.views, ends[n])
            dels.append(auc(d))
            ins.append(auc(i))
        dels_a, ins_a = np.array(dels), np.array(ins)
        if not per_image:
            per_image.update(deletion=dels_a, insertion=ins_a)  # the first candidate: the served method
        dd, di = dels_a - per_image["deletion"], ins_a - per_image["insertion"]
        se = float(np.sqrt(len(dels_a)))
        rows.append({"method": name, "deletion": float(dels_a.mean()), "insertion": float(ins_a.mean()),
                     "deletion_se": float(dels_a.std() / se), "insertion_se": float(ins_a.std() / se),
                     "deletion_vs_served": float(dd.mean()), "deletion_vs_served_se": float(dd.std() / se),
                     "insertion_vs_served": float(di.mean()), "insertion_vs_served_se": float(di.std() / se),
                     "ms_per_heatmap": 1000 * seconds / len(inputs)})
        r = rows[-1]
        print(f"{name:42s} deletion {r['deletion']:.3f} ({dd.mean():+.3f} ±{dd.std() / se:.3f})  "
              f"insertion {r['insertion']:.3f} ({di.mean():+.3f} ±{di.std() / se:.3f})  "
              f"{r['ms_per_heatmap']:6.0f} ms", flush=True)

    table = ["| method | deletion AUC (lower is better) | paired difference to the served one | "
             "insertion AUC (higher is better) | paired difference | ms per heatmap (CPU) |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['deletion']:.3f} | {r['deletion_vs_served']:+.3f} ± "
              f"{r['deletion_vs_served_se']:.3f} | {r['insertion']:.3f} | {r['insertion_vs_served']:+.3f} ± "
              f"{r['insertion_vs_served_se']:.3f} | {r['ms_per_heatmap']:.0f} |" for r in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    result: dict[str, object] = {"images": len(inputs), "fractions": FRACTIONS.tolist(),
                                 "threads": torch.get_num_threads(), "rows": rows, "scale": scale,
                                 "evidence_scale": EVIDENCE_SCALE}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
