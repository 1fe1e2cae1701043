"""Load benchmark: 20 concurrent jobs of 100 real images while 20 clients poll their status.

    .venv/bin/python bench/load.py                      # 20 jobs x 100 images, 20 pollers
    .venv/bin/python bench/load.py --jobs 4 --images 20  # a quick smoke run

Starts a fresh system with `fracture up` (bench/run.py's System), posts every job at once from its own client,
polls `GET /api/jobs/<id>` from `--pollers` clients until every job is final, then checks through the CSV that
every job has one row per image with unique paths and a model version. Prints request counts, failures, the
status endpoint's p50/p95/p99 while the workers were busy, and throughput; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from run import System, real_images

FINAL = ("done", "failed", "cancelled")


@dataclass
class Tally:
    """Requests made and failed, and the status endpoint's latencies, shared by every client thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    status_latency: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)

    def count(self, kind: str, error: str | None = None) -> None:
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            if error is not None:
                self.failures.append(f"{kind}: {error}")


def client(system: System) -> requests.Session:
    """A session of its own per client thread, with the system's credentials when it has them."""
    session = requests.Session()
    shared = getattr(system, "http", None)
    if shared is not None:
        session.headers.update(shared.headers)
    return session


def post_job(system: System, files: list[Path], job: int, tally: Tally, start: threading.Barrier,
             known: list[str]) -> str | None:
    parts = [("files", (f"job{job:02d}/{i:03d}_{f.name}", f.read_bytes())) for i, f in enumerate(files)]
    with client(system) as http:
        start.wait()
        try:
            r = http.post(f"{system.url}/api/jobs", files=parts, timeout=300)
        except requests.RequestException as e:
            tally.count("post", str(e))
            return None
    tally.count("post", None if r.status_code == 201 else f"{r.status_code} {r.text[:200]}")
    if r.status_code != 201:
        return None
    job_id = str(r.json()["id"])
    with tally.lock:
        known.append(job_id)
    return job_id


def poll(system: System, known: list[str], posting_done: threading.Event, tally: Tally, state: dict[str, str],
         offset: int, interval: float) -> None:
    """Poll the jobs accepted so far round-robin (starting at `offset`) until all are posted and final."""
    n = offset
    with client(system) as http:
        while True:
            with tally.lock:
                ids = list(known)
                if posting_done.is_set() and all(state.get(j) in FINAL for j in ids):
                    return
            if not ids:
                time.sleep(0.01)
                continue
            job = ids[n % len(ids)]
            n += 1
            t0 = time.perf_counter()
            try:
                r = http.get(f"{system.url}/api/jobs/{job}", timeout=30)
            except requests.RequestException as e:
                tally.count("status", str(e))
                continue
            seconds = time.perf_counter() - t0
            if r.status_code != 200:
                tally.count("status", f"{r.status_code} {r.text[:200]}")
                continue
            tally.count("status")
            status = r.json()["status"]
            with tally.lock:
                tally.status_latency.append((time.monotonic(), seconds))
                state[job] = status
            time.sleep(interval)


def check_results(system: System, job: str, expect: int, tally: Tally) -> str | None:
    """Why job `job`'s CSV is not one row per image with unique paths and a model version, or None."""
    with client(system) as http:
        r = http.get(f"{system.url}/api/jobs/{job}/results.csv", timeout=120)
    tally.count("csv", None if r.status_code == 200 else str(r.status_code))
    rows = list(csv.DictReader(io.StringIO(r.text)))
    paths = {row["path"] for row in rows}
    if len(rows) != expect or len(paths) != expect:
        return f"{job}: {len(rows)} rows, {len(paths)} distinct paths (expected {expect})"
    if any(not row["model_version"] or not (row["prediction"] or row["error"]) for row in rows):
        return f"{job}: rows without a model version or an outcome"
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--images", type=int, default=100, help="images per job")
    p.add_argument("--pollers", type=int, default=20)
    p.add_argument("--poll-interval", type=float, default=0.1, help="pause of each poller between requests (s)")
    p.add_argument("--concurrency", type=int, default=2, help="inference worker processes")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = real_images(a.jobs * a.images, workdir)
    batches = [files[j * a.images : (j + 1) * a.images] for j in range(a.jobs)]

    system = System(workdir, concurrency=a.concurrency)
    tally = Tally()
    state: dict[str, str] = {}
    try:
        start = threading.Barrier(a.jobs)
        posting_done = threading.Event()
        known: list[str] = []
        t0 = time.monotonic()
        with ThreadPoolExecutor(a.jobs + a.pollers) as pool:
            pollers = [pool.submit(poll, system, known, posting_done, tally, state, k, a.poll_interval)
                       for k in range(a.pollers)]
            posted = [pool.submit(post_job, system, batch, j, tally, start, known) for j, batch in enumerate(batches)]
            jobs = [future.result() for future in posted]
            posted_s = time.monotonic() - t0
            posting_done.set()
            for future in pollers:
                future.result()
        finished_s = time.monotonic() - t0
        ids = [j for j in jobs if j]
        problems = [why for job in ids if (why := check_results(system, job, a.images, tally))]
        problems += [f"{job}: ended {state[job]}" for job in ids if state.get(job) != "done"]
    finally:
        system.stop()

    # Every poll happened while the workers were busy: from the first job accepted until the last one final.
    busy = [s for _, s in tally.status_latency]
    fig: dict[str, Any] = {
        "jobs": a.jobs, "images_per_job": a.images, "pollers": a.pollers, "poll_interval_s": a.poll_interval,
        "inference_concurrency": a.concurrency,
        "requests": dict(tally.requests), "failures": len(tally.failures), "result_problems": len(problems),
        "all_results_exactly_once": not problems and len(ids) == a.jobs,
        "status_p50_ms": 1000 * percentile(busy, 0.50), "status_p95_ms": 1000 * percentile(busy, 0.95),
        "status_p99_ms": 1000 * percentile(busy, 0.99), "status_max_ms": 1000 * max(busy, default=float("nan")),
        "post_all_s": posted_s, "all_final_s": finished_s,
        "throughput_ips": a.jobs * a.images / finished_s,
    }
    print(f"requests: {fig['requests']}  failures: {fig['failures']}")
    for failure in tally.failures[:10]:
        print(f"  failure: {failure}")
    for problem in problems[:10]:
        print(f"  result problem: {problem}")
    print(f"every result present exactly once: {fig['all_results_exactly_once']}")
    print(f"status endpoint while busy ({len(busy)} requests): p50 {fig['status_p50_ms']:.0f} ms, "
          f"p95 {fig['status_p95_ms']:.0f} ms, p99 {fig['status_p99_ms']:.0f} ms, max {fig['status_max_ms']:.0f} ms")
    print(f"{a.jobs} jobs x {a.images} images: posted in {posted_s:.1f} s, all final after {finished_s:.1f} s, "
          f"{fig['throughput_ips']:.1f} images/s")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
