"""Rewrite a shipped model's card after `fracture recalibrate`: new threshold, figures and plots, the spread of
the recipe over training seeds, and the external validation measured by bench/trust.py.

    .venv/bin/python scripts/release_card.py --folder fracture/release --model fracture/release/model.pt \\
        --curves runs/seed0.npz --seed runs/seed0.pt --seed runs/seed1.pt --seed runs/seed2.pt \\
        --external runs/trust-release.md

`--folder` holds the card of the training run (model_card.json); `--curves` is what `fracture recalibrate
--curves` saved for the model; each `--seed` is a recalibrated checkpoint of the same recipe with another seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.checkpoint import read_payload, sha256_file  # noqa: E402
from trainer import card, plots  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--curves", type=Path, default=None, help="redraw the plots from these curves (after recalibrating)")
    p.add_argument("--seed", type=Path, action="append", default=[])
    p.add_argument("--external", type=Path, default=None, help="Markdown written by bench/trust.py --markdown")
    p.add_argument("--note", default="", help="a paragraph under the external validation table")
    a = p.parse_args()
    summary = json.loads((a.folder / "model_card.json").read_text())
    payload = read_payload(a.model)
    summary["sha256"] = sha256_file(a.model)
    summary["threshold"] = payload["threshold"]
    summary["metrics"] = payload["metrics"]
    summary["recalibrated_from"] = payload.get("recalibrated_from", {}).get("threshold")
    if a.curves:
        data = np.load(a.curves)
        curves = {s: (data[f"{s}_y"], data[f"{s}_prob"]) for s in ("train", "val", "test") if f"{s}_y" in data}
        files = plots.write_all(a.folder / "plots", summary["history"], curves, summary["metrics"])
        summary["plots"] = {k: str(v.relative_to(a.folder)) for k, v in files.items()}
    seeds = []
    for path in a.seed:
        sp = read_payload(path)
        seeds.append({"seed": sp.get("seed"), "threshold": sp["threshold"], "metrics": sp["metrics"],
                      "sha256": sha256_file(path)})
    summary["seeds"] = sorted(seeds, key=lambda s: s["seed"])
    if a.external:
        summary["external"] = a.external.read_text().strip() + ("\n\n" + a.note if a.note else "")
    compare = summary.get("compare")
    if compare:
        compare = {"metrics": compare["metrics"], "command": compare.get("command", "?"),
                   "split_sizes": compare.get("split_sizes", "?")}
    card.write(a.folder, summary, compare)
    print(f"wrote {a.folder / 'model_card.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
