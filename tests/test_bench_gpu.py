"""bench/gpu.py, the GPU worker's prepared benchmark, runs its --smoke sizes on the CPU and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_benchmark_runs_its_smoke_sizes_on_the_cpu(sample_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--images", str(sample_dir)],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures == json.loads((tmp_path / "gpu.json").read_text())
    assert figures["device"] == "cpu" and figures["smoke"] is True
    assert set(figures["network_ips"]) == {"float32", "bfloat16"}
    assert all(v > 0 for row in figures["network_ips"].values() for v in row.values())
    assert set(figures["decode_ips_with_thumbnails"]) == set(figures["end_to_end_ips"]) == {"pillow", "torchvision"}
    assert all(v > 0 for row in figures["end_to_end_ips"].values() for v in row.values())
    agree, total = map(int, figures["decisions_agree"].split("/"))
    assert total >= 20 and agree >= total - 1
    assert figures["errors_agree"] is True
    assert figures["recommended"]["DECODER"] in ("pillow", "torchvision")
    assert figures["device_defaults"] == {"BATCH_SIZE": 32, "DECODE_THREADS": 2}
    assert "recommended" in done.stdout and figures["seconds"] < 120  # 5-30 s here, on 2 shared cores
