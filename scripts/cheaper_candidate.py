"""Make the cheaper serving candidate of the release's weights: two test-time views under bfloat16, recalibrated.

    .venv/bin/python scripts/cheaper_candidate.py /tmp/two/first fracture/release/two-views

The weights are the release's, unchanged. The checkpoint says how it is served (views "two-mirrors", precision
"bfloat16": fracture.ml.preprocess), and `fracture recalibrate` (trainer.recalibrate) then chooses its threshold
on val with the trainer's rule for those served outputs and fits its out-of-distribution detector on train for them,
on the release's own data and split (the data's fingerprint must be the release's). Writes OUT/model.pt and
OUT/plots/ (ROC and confusion matrices per split); bench/cheaper.py measures it beside the release.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fracture.ml.checkpoint import read_payload, sha256_file  # noqa: E402
from trainer import plots  # noqa: E402
from trainer.recalibrate import recalibrate  # noqa: E402

RELEASE = REPO / "fracture" / "release" / "model.pt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="the release's dataset laid out (bone-fracture-multiregion's materialize)")
    p.add_argument("out", type=Path, help="folder for model.pt and plots/")
    p.add_argument("--views", default="two-mirrors")
    p.add_argument("--precision", default="bfloat16")
    a = p.parse_args()
    torch.set_num_threads(2)
    payload = read_payload(RELEASE)
    payload["preprocess"] = {**payload["preprocess"], "views": a.views, "precision": a.precision}
    payload["served_from"] = {"model": "release-1", "checkpoint": "fracture/release/model.pt",
                              "sha256": sha256_file(RELEASE),
                              "changed": "test-time views and serving precision; weights unchanged"}
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "staged.pt"
        torch.save(payload, staged)
        summary = recalibrate(staged, a.out / "model.pt", data=a.data)
    (a.out / "plots").mkdir(parents=True, exist_ok=True)
    plots.roc(a.out / "plots" / "roc.png", summary["curves"], summary["metrics"])
    plots.confusion(a.out / "plots" / "confusion.png", summary["metrics"])
    print(f"threshold {summary['previous_threshold']} -> {summary['threshold']:.4f}; sha256 {summary['sha256']}")
    for split in ("train", "val", "test"):
        m = summary["metrics"][split]
        print(f"{split:5s} auc {m['roc_auc']:.4f} sens {m['sensitivity']:.4f} spec {m['specificity']:.4f} "
              f"flagged {m.get('ood_flagged', float('nan')):.3f} (n={m['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
