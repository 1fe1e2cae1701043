"""Lay out the two shared sources for a two-source training, as the product splits a site's dataset.

    .venv/bin/python scripts/two_sources.py /tmp/two

Writes under OUT: first/ and site/ (the materialized datasets), spec.json (the trainer's --data-spec: the first
dataset whole, the second site's training part), locked.json and site-hashes.json (--locked: the second site's
evaluation part, never trained on), and site_parts.json (that part's `train/<label>/<file>` paths, for
bench/trust.py --site-parts and bench/robustness.py). The site's split is the product's own
(trainer.evaluation_holdout.split_members: grouped by near duplicate, stratified, seed 0, a fifth locked), so the
locked part is the one `two-site-1` was measured on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from trainer.dataset_validation import hashes_of, inspect  # noqa: E402
from trainer.evaluation_holdout import split_members  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = a.out.resolve()
    first, site = out / "first", out / "site"
    for name, dest in (("bone-fracture-multiregion", first), ("bone-fracture-roboflow-site", site)):
        if not dest.exists():
            subprocess.run([sys.executable, str(SHARED / name / "materialize"), str(dest)], check=True)
    found = inspect(site, None)
    train, evaluation = split_members(found, site, 0.2, a.seed)
    locked = set(evaluation)
    part = inspect(site, locked)
    (out / "site-hashes.json").write_text(json.dumps(hashes_of(part)))
    (out / "locked.json").write_text(json.dumps([{"name": "site-2 (locked evaluation part)",
                                                  "hashes": str(out / "site-hashes.json")}]))
    (out / "spec.json").write_text(json.dumps([{"name": "multiregion", "root": str(first)},
                                               {"name": "site-2 (training part)", "root": str(site),
                                                "members": train}], indent=1))
    (out / "site_parts.json").write_text(json.dumps(evaluation, indent=1))
    print(f"site: {len(train)} training files, {len(evaluation)} locked evaluation files -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
