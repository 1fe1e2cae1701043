"""Inference benchmark: model limit, naive loops, offline CLI, end to end through `fracture up`, memory.

    .venv/bin/python bench/run.py            # 1,000-image rows and the 10,000-image memory row
    .venv/bin/python bench/run.py --quick    # the same rows on fewer images
    .venv/bin/python bench/run.py --breakdown  # and where a job's time goes (bench/breakdown.py), per stage

Prints a table of figures and ratios; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import requests
import requests.adapters
import torch
import torchvision
from PIL import Image
from urllib3.util.retry import Retry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from harness import Proc, free_port, start_fracture_up  # noqa: E402  (the tests' process harness)

BIN = Path(sys.executable).parent
DATASET = Path(os.environ.get("FRACTURE_DATASET", REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"))
MODEL = REPO / "fracture" / "release" / "model.pt"


def real_images(n: int, workdir: Path) -> list[Path]:
    """`n` real files of the shared dataset (all splits; cycling through them when n exceeds the set)."""
    dest = workdir / "dataset"
    if not dest.exists():
        subprocess.run([sys.executable, str(DATASET / "materialize"), str(dest)], check=True, capture_output=True)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    return [files[i % len(files)] for i in range(n)]


def make_zip(files: list[Path], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i, f in enumerate(files):
            z.write(f, f"batch/{i:05d}_{f.name}")
    return path


# ---------------------------------------------------------------- in-process rows


def limit_ips(predictor, batch: int, seconds: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Raw forward throughput on preprocessed uint8 tensors in memory, at the serving batch size."""
    s = predictor.spec.image_size
    x = torch.randint(0, 256, (batch, 1, s, s), dtype=torch.uint8)
    predictor.probabilities(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.probabilities(x)
        n += batch
    return n / (time.perf_counter() - t0)


def naive_ips(files: list[Path], predictor) -> float:  # type: ignore[no-untyped-def]
    """The seed's way: one image at a time, PIL open, transform, forward."""
    from fracture.ml.preprocess import load_u8

    t0 = time.perf_counter()
    for f in files:
        predictor.probabilities(load_u8(f, predictor.spec).unsqueeze(0))
    return len(files) / (time.perf_counter() - t0)


def reference_ips(files: list[Path]) -> float:
    """What a user would otherwise write: torchvision ResNet18 at 224x224, one image at a time."""
    model = torchvision.models.resnet18(weights=None).eval()
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
        t0 = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                model(tf(im.convert("RGB")).unsqueeze(0))
    return len(files) / (time.perf_counter() - t0)


# ---------------------------------------------------------------- the running system


def vm_hwm_mb(pids: list[int]) -> float:
    """The largest peak RSS (VmHWM) among `pids`, in MB."""
    best = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return best / 1024


def processes_of(home: Path) -> dict[str, list[int]]:
    """The web and inference-worker processes of the installation under `home`."""
    out: dict[str, list[int]] = {"web": [], "worker": []}
    marker = f"FRACTURE_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "gunicorn" in cmd:
            out["web"].append(int(proc.name))
        elif "celery" in cmd and "inference" in cmd:
            out["worker"].append(int(proc.name))
    return out


def workers_reported(health: dict[str, Any]) -> bool:
    """Whether /api/health reports a worker, or cannot ask them (the embedded broker has no broadcast: the first
    job then waits for the workers to start)."""
    workers = health.get("workers") or {}
    return bool(workers.get("workers")) or workers.get("supported") is False


class System:
    """`fracture up` in a fresh FRACTURE_HOME with the release model, on a free port."""

    def __init__(self, workdir: Path, concurrency: int = 1, broker: str = "auto",
                 extra_env: dict[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
        env.update(FRACTURE_HOME=str(self.home), FRACTURE_SEED_MODEL=str(MODEL), PYTHONUNBUFFERED="1")
        env.update(extra_env or {})
        self.env = env
        self.proc: Proc = start_fracture_up(env, self.port, self.home, broker=broker, concurrency=concurrency,
                                            name="up", healthy=workers_reported)
        self.http = requests.Session()
        # A GET that meets a keep-alive connection the server has just closed is sent again (as a browser does).
        self.http.mount("http://", requests.adapters.HTTPAdapter(
            max_retries=Retry(total=3, connect=3, read=3, status=0, allowed_methods={"GET"}, backoff_factor=0.1)))
        try:
            self.http.headers["Authorization"] = f"Bearer {self.create_user('bench', admin=True)['token']}"
        except BaseException:
            self.stop()
            raise

    def create_user(self, name: str, admin: bool = False) -> dict[str, str]:
        """`fracture users create NAME --json` against this installation: {"username", "password", "token"}."""
        args = [str(BIN / "fracture"), "users", "create", name, "--json", *(["--admin"] if admin else [])]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=120)
        creds: dict[str, str] = json.loads(done.stdout)
        return creds

    def run_job(self, zip_path: Path, expect: int) -> tuple[float, float]:
        """POST the zip, poll until final, fetch the CSV; returns (seconds incl. upload, status p95 ms)."""
        t0 = time.perf_counter()
        with open(zip_path, "rb") as f:
            r = self.http.post(f"{self.url}/api/jobs", files={"files": (zip_path.name, f, "application/zip")},
                              timeout=600)
        r.raise_for_status()
        job = r.json()["id"]
        lat = []
        while True:
            t = time.perf_counter()
            state = self.http.get(f"{self.url}/api/jobs/{job}", timeout=30).json()
            lat.append(time.perf_counter() - t)
            if state["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        text = self.http.get(f"{self.url}/api/jobs/{job}/results.csv", timeout=120).text
        elapsed = time.perf_counter() - t0
        rows = list(csv.DictReader(io.StringIO(text)))
        if state["status"] != "done" or len(rows) != expect or any(not r["model_version"] for r in rows):
            raise RuntimeError(f"job ended {state['status']} with {len(rows)} rows (expected {expect})")
        lat.sort()
        return elapsed, 1000 * lat[int(0.95 * (len(lat) - 1))]

    def rss(self) -> dict[str, float]:
        procs = processes_of(self.home)
        return {k: vm_hwm_mb(v) for k, v in procs.items()}

    def stop(self) -> None:
        """Close the HTTP session and stop `fracture up` as Ctrl-C does (SIGKILL after 60 s)."""
        self.http.close()
        self.proc.stop(timeout=60, sig=signal.SIGINT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images (200, memory 200 vs 1,000)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--breakdown", action="store_true",
                   help="also lay out a job's time per stage (bench/breakdown.py), a fresh system's first job included")
    a = p.parse_args()
    n = 200 if a.quick else 1000
    n_big = 1000 if a.quick else 10_000
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from fracture.config import get_settings
    from fracture.ml.inference import Predictor

    settings = get_settings()
    predictor = Predictor.from_file(MODEL, device=torch.device("cpu"), batch_size=settings.batch_size)
    files = real_images(n_big, workdir)
    small = files[:n]
    fig: dict[str, float | int | str] = {"images": n, "batch_size": predictor.batch_size,
                                         "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count() or 0}

    fig["limit_ips"] = limit_ips(predictor, predictor.batch_size)
    fig["views"] = predictor.spec.views
    # The same weights on one view: what the test-time views cost (a model trained with --views identity runs so).
    one_spec = dataclasses.replace(predictor.spec, views="identity")
    one_view = Predictor(dataclasses.replace(predictor.ckpt, preprocess=one_spec), device=torch.device("cpu"),
                         batch_size=predictor.batch_size)
    fig["limit_one_view_ips"] = limit_ips(one_view, predictor.batch_size)
    fig["naive_ips"] = naive_ips(small[: max(100, n // 5)], predictor)
    fig["reference_ips"] = reference_ips(small[:100])

    csv_out = workdir / "offline.csv"
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "fracture"), "classify", *map(str, small), "--out", str(csv_out), "--model", str(MODEL)],
                   check=True, capture_output=True)
    fig["offline_ips"] = n / (time.perf_counter() - t0)
    starts = []
    for _ in range(3):  # a start of `fracture classify` on one file: imports, model load, one image, the CSV
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "fracture"), "classify", str(small[0]), "--out", str(workdir / "one.csv"),
                        "--model", str(MODEL)], check=True, capture_output=True)
        starts.append(time.perf_counter() - t0)
    fig["classify_one_s"] = min(starts)

    zip_small = make_zip(small, workdir / f"batch-{n}.zip")
    zip_big = make_zip(files, workdir / f"batch-{n_big}.zip")
    one = make_zip(small[:1], workdir / "one.zip")

    system = System(workdir, concurrency=1)
    try:
        system.run_job(one, 1)  # warm the worker: the model is loaded in the child on first use
        fig["one_image_latency_s"] = min(system.run_job(one, 1)[0] for _ in range(3))
        seconds, p95 = system.run_job(zip_small, n)
        fig["e2e_ips"] = n / seconds
        fig["status_p95_ms"] = p95
        rss = system.rss()
        fig["worker_rss_mb_1k"], fig["web_rss_mb_1k"] = rss["worker"], rss["web"]
    finally:
        system.stop()

    system = System(workdir, concurrency=2)
    try:
        system.run_job(one, 1)
        seconds, _ = system.run_job(zip_small, n)
        fig["e2e_ips_2_workers"] = n / seconds
    finally:
        system.stop()

    system = System(workdir, concurrency=1)
    try:
        seconds, _ = system.run_job(zip_big, n_big)
        fig["e2e_ips_10k"] = n_big / seconds
        rss = system.rss()
        fig["worker_rss_mb_10k"], fig["web_rss_mb_10k"] = rss["worker"], rss["web"]
    finally:
        system.stop()

    fig["e2e_ratio_to_limit"] = fig["e2e_ips"] / fig["limit_ips"]  # type: ignore[operator]
    fig["e2e_ratio_to_reference"] = fig["e2e_ips"] / fig["reference_ips"]  # type: ignore[operator]
    fig["worker_rss_ratio_10k_to_1k"] = fig["worker_rss_mb_10k"] / fig["worker_rss_mb_1k"]  # type: ignore[operator]
    fig["web_rss_ratio_10k_to_1k"] = fig["web_rss_mb_10k"] / fig["web_rss_mb_1k"]  # type: ignore[operator]

    rows = [
        (f"limit (raw forward, in memory, {fig['views']} views)", f"{fig['limit_ips']:.0f} img/s", "1.00 x limit"),
        ("limit on one view (same weights, no test-time views)", f"{fig['limit_one_view_ips']:.0f} img/s",
         f"{fig['limit_one_view_ips'] / fig['limit_ips']:.2f} x limit"),  # type: ignore[operator]
        ("naive (one at a time, shipped model)", f"{fig['naive_ips']:.0f} img/s",
         f"{fig['naive_ips'] / fig['limit_ips']:.2f} x limit"),  # type: ignore[operator]
        ("reference (ResNet18@224, one at a time)", f"{fig['reference_ips']:.0f} img/s", ""),
        (f"offline `fracture classify` ({n})", f"{fig['offline_ips']:.0f} img/s",
         f"{fig['offline_ips'] / fig['limit_ips']:.2f} x limit"),  # type: ignore[operator]
        ("`fracture classify` of one file (start-up; target < 3 s)", f"{fig['classify_one_s']:.2f} s",
         f"{fig['classify_one_s'] / 3:.2f} x target"),  # type: ignore[operator]
        (f"end to end, 1 worker ({n}, upload incl.)", f"{fig['e2e_ips']:.0f} img/s",
         f"{fig['e2e_ratio_to_limit']:.2f} x limit, {fig['e2e_ratio_to_reference']:.1f} x reference"),
        (f"end to end, 2 workers ({n})", f"{fig['e2e_ips_2_workers']:.0f} img/s",
         f"{fig['e2e_ips_2_workers'] / fig['limit_ips']:.2f} x limit"),  # type: ignore[operator]
        ("one-image job, warm worker", f"{fig['one_image_latency_s']:.2f} s", ""),
        ("status endpoint p95 while busy", f"{fig['status_p95_ms']:.0f} ms", ""),
        (f"worker peak RSS {n} / {n_big}", f"{fig['worker_rss_mb_1k']:.0f} / {fig['worker_rss_mb_10k']:.0f} MB",
         f"{fig['worker_rss_ratio_10k_to_1k']:.2f} x"),
        (f"web peak RSS {n} / {n_big}", f"{fig['web_rss_mb_1k']:.0f} / {fig['web_rss_mb_10k']:.0f} MB",
         f"{fig['web_rss_ratio_10k_to_1k']:.2f} x"),
    ]
    if a.breakdown:
        from breakdown import measure

        parts = measure(workdir, n, jobs=3)
        fig["first_job_ips"], fig["later_job_ips"] = parts["first_job_ips"], parts["later_job_ips"]
        fig["breakdown"] = parts  # type: ignore[assignment]  (a nested object in the JSON line)
        rows.append((f"first job of a just-started system / later jobs ({n})",
                     f"{parts['first_job_ips']:.0f} / {parts['later_job_ips']:.0f} img/s",
                     f"{parts['first_to_later_ratio']:.2f} x"))
    print("| row | figure | ratio |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
