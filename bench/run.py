"""Inference benchmark: the release and the chosen cheaper model side by side, from the network's limit to a job's
CSV, in one run.

    .venv/bin/python bench/run.py            # everything, with 2 workers and a 10,000-image job (memory) per model
    .venv/bin/python bench/run.py --quick    # without the 2-worker and 10,000-image rows

For each model (`--model NAME=PATH`, default: release-1 and two-views-1, the shipped checkpoints):
- its quality as its checkpoint records it (the first source's grouped test split: ROC-AUC, sensitivity,
  specificity at its own threshold), its test-time views and serving precision;
- the limit: the network alone at the serving batch size on preprocessed tensors in memory (the out-of-distribution
  detector's features included, as served);
- `fracture classify`: start-up (one file: process start, imports, model load, one image, the CSV; best of 3) and 200
  files offline;
- end to end through `fracture up` (zip POSTed until its CSV is complete) on a system started with that model
  active: the first job of the just-started system (200 images), two later 200-image jobs, a 1,000-image job, as
  ratios to the model's own limit and to the reference; where each job's time goes (the worker's per-chunk stage
  timings, bench/breakdown.py), the first job beside a later one;
- the reference, once: what a user would otherwise write (torchvision ResNet18 at 224x224, one image at a time).

Prints the tables, then one JSON object with every figure on the last line. The machine's CPUs are shared: compare
within one run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
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
from harness import Proc, free_port, start_fracture_up, wait_for  # noqa: E402  (the tests' process harness)

BIN = Path(sys.executable).parent
DATASET = Path(os.environ.get("FRACTURE_DATASET", REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"))
MODEL = REPO / "fracture" / "release" / "model.pt"
# The models compared by default: the active release, and the cheaper model chosen for issue 23
# (fracture/release/cheaper.md), shipped beside it as a candidate.
MODELS = (("release-1", MODEL), ("two-views-1", REPO / "fracture" / "release" / "two-views" / "model.pt"))
# What a worker child logs once its start-up model load is over (worker/classify.py warm_up), loaded or not.
WARMED = re.compile(r"model \S+ loaded in [\d.]+ s|model not loaded at start|no active model to load at start")
SIZES = (200, 1000)  # the end-to-end job sizes: what most uploads are, and a large one


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


def limit_ips(predictor, batch: int, seconds: float = 6.0, window: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    """Raw forward throughput on preprocessed uint8 tensors in memory, at the serving batch size: the best window of
    `window` seconds in `seconds` (this shared machine's speed swings within seconds; the best is the quiet one)."""
    s = predictor.spec.image_size
    x = torch.randint(0, 256, (batch, 1, s, s), dtype=torch.uint8)
    predictor.probabilities(x)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < window:
            predictor.probabilities(x)
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def pipeline_ips(predictor, files: list[Path], rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    """The worker's own pipeline in this process: Predictor.predict over the files (decode threads beside the
    forward passes, thumbnails as served), best of `rounds`: what the same two cores do with decoding included."""
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        done = sum(1 for _ in predictor.predict(files, thumbnails=True))
        best = max(best, done / (time.perf_counter() - t0))
    return best


def decode_ips(predictor, files: list[Path], rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Decoding alone as the worker's decode threads do it (the same number of threads, each file read, decoded,
    squared to the network's input and its thumbnail made), no network beside it; best of `rounds`."""
    from concurrent.futures import ThreadPoolExecutor

    best = 0.0
    for _ in range(rounds):
        with ThreadPoolExecutor(predictor.decode_threads) as pool:
            t0 = time.perf_counter()
            done = sum(1 for _ in pool.map(lambda f: predictor._decode(f, thumbnail=True), files))
            best = max(best, done / (time.perf_counter() - t0))
    return best


def machine_speed(seconds: int = 8) -> list[int]:
    """Matrix products (512x512, float32) per second in each of `seconds` one-second windows: how steady this
    machine is while the benchmark runs (the tables' figures can only be as steady as this)."""
    x = torch.randn(512, 512)
    out = []
    for _ in range(seconds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1:
            x @ x
            n += 1
        out.append(n)
    return out


def naive_ips(files: list[Path], predictor) -> float:  # type: ignore[no-untyped-def]
    """The seed's way: one image at a time, PIL open, transform, forward."""
    from fracture.ml.preprocess import load_u8

    t0 = time.perf_counter()
    for f in files:
        predictor.probabilities(load_u8(f, predictor.spec).unsqueeze(0))
    return len(files) / (time.perf_counter() - t0)


def reference_ips(files: list[Path], windows: int = 4) -> float:
    """What a user would otherwise write: torchvision ResNet18 at 224x224, one image at a time; the best of
    `windows` runs over a share of the files each."""
    model = torchvision.models.resnet18(weights=None).eval()
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    step = max(1, len(files) // windows)
    best = 0.0
    with torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
        for w in range(windows):
            part = files[w * step:(w + 1) * step]
            t0 = time.perf_counter()
            for f in part:
                with Image.open(f) as im:
                    model(tf(im.convert("RGB")).unsqueeze(0))
            best = max(best, len(part) / (time.perf_counter() - t0))
    return best


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


@dataclass
class JobRun:
    """One job as the client saw it (epoch seconds of each step) and, once read from the worker's log, its chunks
    (bench/breakdown.py's Chunk)."""

    images: int
    posted: float = 0.0
    created: float = 0.0
    done_seen: float = 0.0
    csv_start: float = 0.0
    csv_end: float = 0.0
    job_id: str = ""
    polls: list[float] = field(default_factory=list)  # seconds each status request took
    chunks: list[Any] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.csv_end - self.posted

    @property
    def ips(self) -> float:
        return self.images / self.wall

    @property
    def poll_p95_ms(self) -> float:
        lat = sorted(self.polls)
        return 1000 * lat[int(0.95 * (len(lat) - 1))]


class System:
    """`fracture up` with the release model on a free port: in a fresh FRACTURE_HOME, or again in `home` (an
    installation this benchmark started before, whose user `bench` has the API `token`)."""

    def __init__(self, workdir: Path, concurrency: int = 1, broker: str = "auto",
                 extra_env: dict[str, str] | None = None, home: Path | None = None, token: str | None = None) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
        env.update(FRACTURE_HOME=str(self.home), FRACTURE_SEED_MODEL=str(MODEL), PYTHONUNBUFFERED="1")
        env.update(extra_env or {})
        self.env = env
        worker_log = self.home / "logs" / "inference-worker.log"
        offset = worker_log.stat().st_size if worker_log.exists() else 0
        self.proc: Proc = start_fracture_up(env, self.port, self.home, broker=broker, concurrency=concurrency,
                                            name="up", healthy=workers_reported)
        # Ready: every worker child has loaded the active model and run its warm-up batch (or said why not).
        try:
            wait_for(lambda: len(WARMED.findall(worker_log.read_bytes()[offset:].decode(errors="replace")))
                     >= concurrency, 180, "the inference worker children to load the model")
        except BaseException:
            self.proc.stop(timeout=60, sig=signal.SIGINT)
            raise
        self.http = requests.Session()
        # A GET that meets a keep-alive connection the server has just closed is sent again (as a browser does).
        self.http.mount("http://", requests.adapters.HTTPAdapter(
            max_retries=Retry(total=3, connect=3, read=3, status=0, allowed_methods={"GET"}, backoff_factor=0.1)))
        try:
            self.token = token or self.create_user("bench", admin=True)["token"]
        except BaseException:
            self.stop()
            raise
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def create_user(self, name: str, admin: bool = False) -> dict[str, str]:
        """`fracture users create NAME --json` against this installation: {"username", "password", "token"}."""
        args = [str(BIN / "fracture"), "users", "create", name, "--json", *(["--admin"] if admin else [])]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=120)
        creds: dict[str, str] = json.loads(done.stdout)
        return creds

    def run_job(self, zip_path: Path, expect: int) -> JobRun:
        """POST the zip, poll the job until final (every 50 ms), fetch the CSV; the time stamps of each step."""
        run = JobRun(expect)
        run.posted = time.time()
        with open(zip_path, "rb") as f:
            r = self.http.post(f"{self.url}/api/jobs", files={"files": (zip_path.name, f, "application/zip")},
                               timeout=600)
        r.raise_for_status()
        run.created = time.time()
        run.job_id = r.json()["id"]
        while True:
            t = time.perf_counter()
            state = self.http.get(f"{self.url}/api/jobs/{run.job_id}", timeout=30).json()
            run.polls.append(time.perf_counter() - t)
            if state["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
        run.done_seen = run.csv_start = time.time()
        text = self.http.get(f"{self.url}/api/jobs/{run.job_id}/results.csv", timeout=120).text
        run.csv_end = time.time()
        rows = list(csv.DictReader(io.StringIO(text)))
        if state["status"] != "done" or len(rows) != expect or any(not r["model_version"] for r in rows):
            raise RuntimeError(f"job ended {state['status']} with {len(rows)} rows (expected {expect})")
        return run

    def promote(self, name: str) -> None:
        self.http.post(f"{self.url}/api/models/{name}/promote", timeout=60).raise_for_status()

    def worker_log(self) -> str:
        return (self.home / "logs" / "inference-worker.log").read_text(errors="replace")

    def rss(self) -> dict[str, float]:
        procs = processes_of(self.home)
        return {k: vm_hwm_mb(v) for k, v in procs.items()}

    def stop(self) -> None:
        """Close the HTTP session and stop `fracture up` as Ctrl-C does (SIGKILL after 60 s)."""
        self.http.close()
        self.proc.stop(timeout=60, sig=signal.SIGINT)


# ---------------------------------------------------------------- per model


def quality(predictor) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the checkpoint records of its served quality on the first source's grouped test split."""
    test = predictor.ckpt.meta.get("metrics", {}).get("test", {})
    spec = predictor.spec
    return {"test_roc_auc": test.get("roc_auc"), "test_sensitivity": test.get("sensitivity"),
            "test_specificity": test.get("specificity"), "test_n": test.get("n"),
            "threshold": predictor.ckpt.threshold, "views": spec.views, "precision": spec.precision}


def classify_cli(model: Path, files: list[Path], workdir: Path) -> dict[str, float]:
    """`fracture classify` with `model`: start-up on one file (best of 3) and the rate on `files`."""
    cmd = [str(BIN / "fracture"), "classify", "--model", str(model)]
    starts = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([*cmd, str(files[0]), "--out", str(workdir / "one.csv")], check=True, capture_output=True)
        starts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([*cmd, *map(str, files), "--out", str(workdir / "offline.csv")], check=True, capture_output=True)
    return {"classify_start_s": min(starts), "offline_ips": len(files) / (time.perf_counter() - t0)}


def started_with(workdir: Path, name: str, concurrency: int, home: Path | None, token: str | None) -> System:
    """A just-started system whose active model is `name`: a fresh installation (release-1 active, the shipped
    candidates registered), the model promoted there, and the system started again so that its workers load it at
    their start, as they would any day."""
    if home is None:
        setup = System(workdir, concurrency=1)
        try:
            if name != "release-1":
                setup.promote(name)
        finally:
            setup.stop()
        home, token = setup.home, setup.token
    return System(workdir, concurrency=concurrency, home=home, token=token)


def end_to_end(workdir: Path, name: str, zips: dict[int, Path], one: Path, big: tuple[int, Path] | None,
               upload: dict[int, dict[str, float]], rounds: int) -> dict[str, Any]:
    """The model's end-to-end rows, in `rounds` starts of the system: in each, the first 200-image job of the
    just-started system, two later ones and a 1,000-image job; one-image jobs; where the first and a later job's time
    goes (in the round whose later jobs ran fastest); with `big`, 2 workers and a large job."""
    from breakdown import breakdown, chunks_of

    n_small, n_mid = SIZES
    fig: dict[str, Any] = {"rounds": rounds}
    home: Path | None = None
    token: str | None = None
    runs = []
    for r in range(rounds):
        system = started_with(workdir, name, 1, home, token)
        home, token = system.home, system.token
        try:
            first = system.run_job(zips[n_small], n_small)
            later = [system.run_job(zips[n_small], n_small) for _ in range(2)]
            mid = system.run_job(zips[n_mid], n_mid)
            if r == 0:
                fig["one_image_latency_s"] = min(system.run_job(one, 1).wall for _ in range(3))
                rss = system.rss()
                fig[f"worker_rss_mb_{n_mid}"], fig[f"web_rss_mb_{n_mid}"] = rss["worker"], rss["web"]
            log_text = system.worker_log()
        finally:
            system.stop()
        for run in (first, *later, mid):
            run.chunks = chunks_of(log_text, run.job_id)
        runs.append((first, later, mid))
    later_ips = [[run.ips for run in later] for _, later, _ in runs]
    fig["first_job_ips_each"] = [first.ips for first, _, _ in runs]
    fig[f"e2e_ips_{n_small}_each"] = [x for each in later_ips for x in each]
    fig[f"e2e_ips_{n_mid}_each"] = [mid.ips for _, _, mid in runs]
    fig["first_to_later_each"] = [first.ips / statistics.median(each)
                                  for (first, _, _), each in zip(runs, later_ips, strict=True)]
    for key in ("first_job_ips", f"e2e_ips_{n_small}", f"e2e_ips_{n_mid}", "first_to_later"):
        fig[key] = max(fig[f"{key}_each"])  # the best: the quiet moments of this shared machine, as for the limit
        fig[f"{key}_median"] = statistics.median(fig[f"{key}_each"])
    fig["first_to_later"] = fig["first_to_later_median"]  # a ratio within one round: its median is the figure
    fig["status_p95_ms"] = statistics.median(mid.poll_p95_ms for _, _, mid in runs)
    first, later, mid = max(runs, key=lambda run: max(x.ips for x in run[1]))
    best_later = max(later, key=lambda run: run.ips)
    fig["breakdown"] = {
        "first_200": {k: 1000 * v / n_small for k, v in breakdown(first, upload[n_small]).items()},
        "later_200": {k: 1000 * v / n_small for k, v in breakdown(best_later, upload[n_small]).items()},
        f"job_{n_mid}": {k: 1000 * v / n_mid for k, v in breakdown(mid, upload[n_mid]).items()},
    }
    if big is not None:
        system = System(workdir, concurrency=2, home=home, token=token)
        try:
            fig[f"e2e_ips_{n_mid}_2_workers"] = system.run_job(zips[n_mid], n_mid).ips
        finally:
            system.stop()
        n_big, zip_big = big
        system = System(workdir, concurrency=1, home=home, token=token)
        try:
            fig[f"e2e_ips_{n_big}"] = system.run_job(zip_big, n_big).ips
            rss = system.rss()
            fig[f"worker_rss_mb_{n_big}"], fig[f"web_rss_mb_{n_big}"] = rss["worker"], rss["web"]
        finally:
            system.stop()
    return fig


# ---------------------------------------------------------------- the tables


def cell(fig: dict[str, Any], key: str, fmt: str) -> str:
    value = fig.get(key)
    return "" if value is None else format(value, fmt)


def print_tables(models: list[tuple[str, dict[str, Any]]], shared: dict[str, Any], big: int | None) -> None:
    n_small, n_mid = SIZES
    base = models[0][1]
    names = [name for name, _ in models]
    ref = shared["reference_ips"]
    print("| row | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))

    def row(label: str, render) -> None:  # type: ignore[no-untyped-def]
        print(f"| {label} | " + " | ".join(render(f) for _, f in models) + " |")

    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.0f}" if v > 5 else f"{v:.2f}" for v in values)

    row("test-time views, serving precision, threshold",
        lambda f: f"{f['views']}, {f['precision']}, {f['threshold']:.4f}")
    row("grouped test split (checkpoint): ROC-AUC / sensitivity / specificity",
        lambda f: f"{f['test_roc_auc']:.4f} / {f['test_sensitivity']:.4f} / {f['test_specificity']:.4f}")
    row(f"limit: the network alone, batch {shared['batch_size']}, tensors in memory (best 1 s)",
        lambda f: f"{f['limit_ips']:.0f} img/s = {f['limit_ips'] / base['limit_ips']:.2f} x {names[0]}")
    row(f"decoding alone: the worker's {shared['decode_threads']} decode threads, {n_small} files, thumbnails",
        lambda f: f"{f['decode_ips']:.0f} img/s")
    row("both on the same cores, at best: 1 / (1 / decoding + 1 / limit)",
        lambda f: f"{f['bound_ips']:.0f} img/s = {f['bound_ips'] / f['limit_ips']:.2f} x limit")
    row(f"the worker's pipeline in one process: decode threads + network, {n_small} files, thumbnails (best of 3)",
        lambda f: f"{f['pipeline_ips']:.0f} img/s = {f['pipeline_ips'] / f['limit_ips']:.2f} x limit, "
                  f"{f['pipeline_ips'] / f['bound_ips']:.2f} x bound")
    for n in SIZES:
        label = f"end to end, {n}-image job, 1 worker: best (median) of {len(base[f'e2e_ips_{n}_each'])}"
        row(label, lambda f, n=n: f"{f[f'e2e_ips_{n}']:.0f} ({f[f'e2e_ips_{n}_median']:.0f}) img/s = "
                                  f"{f[f'e2e_ips_{n}'] / f['limit_ips']:.2f} x limit, "
                                  f"{f[f'e2e_ips_{n}'] / f['bound_ips']:.2f} x bound, "
                                  f"{f[f'e2e_ips_{n}'] / ref:.1f} x reference, "
                                  f"{f[f'e2e_ips_{n}'] / base[f'e2e_ips_{n}']:.2f} x {names[0]}")
    row(f"first {n_small}-image job of a just-started system / later jobs, median of {base['rounds']} starts",
        lambda f: f"{f['first_to_later']:.2f} x (each: {each(f['first_to_later_each'])})")
    row("`fracture classify` start-up, one file, best of 3 (target < 3 s)", lambda f: f"{f['classify_start_s']:.2f} s")
    row(f"`fracture classify`, {n_small} files", lambda f: f"{f['offline_ips']:.0f} img/s = "
                                                          f"{f['offline_ips'] / f['limit_ips']:.2f} x limit")
    row("one-image job, warm worker, upload to CSV (best of 3)", lambda f: f"{f['one_image_latency_s']:.2f} s")
    row(f"status endpoint p95 during the {n_mid}-image job", lambda f: f"{f['status_p95_ms']:.0f} ms")
    if big is not None:
        row(f"end to end, 2 worker processes ({n_mid})",
            lambda f: f"{f[f'e2e_ips_{n_mid}_2_workers']:.0f} img/s = "
                      f"{f[f'e2e_ips_{n_mid}_2_workers'] / f['limit_ips']:.2f} x limit")
        row(f"end to end, {big}-image job", lambda f: f"{f[f'e2e_ips_{big}']:.0f} img/s = "
                                                  f"{f[f'e2e_ips_{big}'] / f['limit_ips']:.2f} x limit")
        row(f"worker peak RSS, {n_mid} / {big} images",
            lambda f: f"{f[f'worker_rss_mb_{n_mid}']:.0f} / {f[f'worker_rss_mb_{big}']:.0f} MB")
        row(f"web peak RSS, {n_mid} / {big} images",
            lambda f: f"{f[f'web_rss_mb_{n_mid}']:.0f} / {f[f'web_rss_mb_{big}']:.0f} MB")
    print(f"\nreference (torchvision ResNet18 at 224x224, one image at a time, best of 4): {ref:.0f} img/s; "
          f"naive ({names[0]}, one image at a time): {shared['naive_ips']:.0f} img/s; "
          f"{names[0]} on one view (same weights): {shared['limit_one_view_ips']:.0f} img/s")
    speed = shared["machine_speed"]
    print(f"this machine's speed (512x512 matrix products per second, one-second windows, at the start and the end): "
          f"{each(speed['start'])} | {each(speed['end'])}: slowest / fastest "
          f"{min(speed['start'] + speed['end']) / max(speed['start'] + speed['end']):.2f}")

    from breakdown import LABELS, THREAD_STAGES

    print("\nWhere a job's time goes, ms per image (the worker's chunk timings, in the round whose later jobs ran "
          "fastest; rows in parentheses run beside the critical path, in the decode threads, or inside the upload)")
    columns = [(name, part) for name, _ in models for part in ("first_200", "later_200", f"job_{n_mid}")]
    print("| stage | " + " | ".join(f"{name} {part.replace('_', ' ')}" for name, part in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    figs = dict(models)

    def aside(key: str) -> bool:
        return key in THREAD_STAGES or key.startswith("upload_")

    for key, label in LABELS.items():
        cells = [figs[name]["breakdown"][part].get(key) for name, part in columns]
        text = [("" if v is None else f"({v:.2f})" if aside(key) else f"{v:.2f}") for v in cells]
        print(f"| {label.strip()} | " + " | ".join(text) + " |")
    totals = [sum(v for k, v in figs[name]["breakdown"][part].items() if k in LABELS and not aside(k))
              for name, part in columns]
    print("| **wall (sum of the rows not in parentheses)** | " + " | ".join(f"{t:.2f}" for t in totals) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="without the 2-worker and 10,000-image rows")
    p.add_argument("--rounds", type=int, default=3, help="starts of the system per model (default 3)")
    p.add_argument("--model", action="append", default=None, metavar="NAME=PATH",
                   help="a shipped version to compare (its name in a fresh installation and its file); default: "
                        + ", ".join(f"{n}={p.relative_to(REPO)}" for n, p in MODELS))
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    models = [(n, Path(f)) for n, f in (m.split("=", 1) for m in a.model)] if a.model else list(MODELS)
    n_small, n_mid = SIZES
    n_big = None if a.quick else 10_000
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from breakdown import upload_estimates

    from fracture.config import get_settings
    from fracture.ml.inference import Predictor

    settings = get_settings()
    files = real_images(max(n_mid, n_big or 0), workdir)
    zips = {n: make_zip(files[:n], workdir / f"batch-{n}.zip") for n in SIZES}
    one = make_zip(files[:1], workdir / "one.zip")
    big = None if n_big is None else (n_big, make_zip(files, workdir / f"batch-{n_big}.zip"))
    upload = {n: upload_estimates(z, workdir) for n, z in zips.items()}
    shared: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                              "cpus": os.cpu_count() or 0, "sizes": list(SIZES),
                              "machine_speed": {"start": machine_speed()}}
    shared["reference_ips"] = reference_ips(files[:100])

    figs: list[tuple[str, dict[str, Any]]] = []
    for name, path in models:
        predictor = Predictor.from_file(path, device=torch.device("cpu"), batch_size=settings.batch_size)
        fig = {"file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), **quality(predictor)}
        shared["batch_size"] = predictor.batch_size  # BATCH_SIZE, or the CPU's default
        shared["decode_threads"] = predictor.decode_threads
        fig["limit_ips"] = limit_ips(predictor, predictor.batch_size)
        fig["pipeline_ips"] = pipeline_ips(predictor, files[:n_small])
        fig["decode_ips"] = decode_ips(predictor, files[:n_small])
        # Decoding and the network share the same cores: at best each image costs the sum of the two.
        fig["bound_ips"] = 1 / (1 / fig["decode_ips"] + 1 / fig["limit_ips"])
        if not figs:  # the first model's extra rows: its weights on one view, and one image at a time
            one_spec = dataclasses.replace(predictor.spec, views="identity")
            one_view = Predictor(dataclasses.replace(predictor.ckpt, preprocess=one_spec), device=torch.device("cpu"),
                                 batch_size=predictor.batch_size)
            shared["limit_one_view_ips"] = limit_ips(one_view, predictor.batch_size)
            shared["naive_ips"] = naive_ips(files[:200], predictor)
        del predictor  # its threads and memory are not the running system's
        fig.update(classify_cli(path, files[:n_small], workdir))
        fig.update(end_to_end(workdir, name, zips, one, big, upload, a.rounds))
        figs.append((name, fig))
        print(f"{name}: measured", file=sys.stderr, flush=True)
    shared["machine_speed"]["end"] = machine_speed()

    print_tables(figs, shared, n_big)

    def rounded(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        return {k: rounded(x) for k, x in v.items()} if isinstance(v, dict) else v

    print(json.dumps(rounded({**shared, "models": dict(figs)})))


if __name__ == "__main__":
    main()
