"""The serving processes' OpenMP threads wait passively (fracture.ml.threads): set before torch loads, in the
inference worker and `fracture classify`, not in the trainer; an explicit OMP_WAIT_POLICY wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = ("import os, sys; import {module}; import torch; "
         "print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() > 0)")


def _probe(module: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.split()


def test_the_worker_waits_passively_and_sets_it_before_torch_loads() -> None:
    assert _probe("worker") == ["PASSIVE", "True"]
    # Nothing the worker package imports loads torch before the setting (it would come too late).
    code = "import sys; from fracture.ml.threads import wait_passively; print(wait_passively())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True"]
    code = "import sys, torch; from fracture.ml.threads import wait_passively; print(wait_passively())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"]


def test_an_explicit_policy_wins_and_the_trainer_keeps_the_default() -> None:
    assert _probe("worker", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "True"]
    assert _probe("trainer") == ["None", "True"]


def test_fracture_classify_waits_passively(tmp_path: Path, sample_images: list[Path]) -> None:
    """The command's module loads no torch; the command sets the policy, then classifies (torch loaded by then)."""
    code = ("import os, sys; from click.testing import CliRunner; from launcher.cli import main; "
            "before = 'torch' in sys.modules; "
            "r = CliRunner().invoke(main, ['classify', sys.argv[1], '--out', sys.argv[2]]); "
            "print(before, r.exit_code, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code, str(sample_images[0]), str(tmp_path / "out.csv")],
                          cwd=REPO, env={**base, "FRACTURE_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.split()[-4:] == ["False", "0", "PASSIVE", "True"]
    assert (tmp_path / "out.csv").read_text().count("\n") == 2  # the header and the file's row
