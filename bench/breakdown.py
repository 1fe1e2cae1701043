"""Where a job's time goes, per image and per job: the upload, each stage of the worker, the gaps between chunks,
the CSV.

    .venv/bin/python bench/breakdown.py                 # 200 real images, a fresh `fracture up`, 1 worker
    .venv/bin/python bench/breakdown.py --images 1000 --jobs 3

Starts `fracture up` in a fresh FRACTURE_HOME and POSTs the same zip of real images `--jobs` times: the first job
is a just-started system's, the others are later ones. The worker logs one "chunk done" line per chunk
(worker/classify.py); this script reads them from the worker's log and lays each job out on one time line:

    upload request | wait for the first chunk | chunks (and the gaps between them) | until the poll sees it done | CSV

so the critical-path rows add up to the job's wall time. decode, preprocess and thumbnail encode run in the
worker's decode threads beside the forward passes: their rows are summed thread time, shown apart (not part of
the 100 %); what the forward loop waited for them is "decode wait". The upload's archive reading and storing are
measured in this process on the same zip with the web's own ingest code (the server's share of the request is
not logged), the rest of the request is the multipart parse, the Job and Image rows, the enqueue and HTTP.

Prints a table per job and a final JSON line. The machine's CPUs are shared: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import JobRun, System, make_zip, real_images  # noqa: E402  (bench/run.py: the same system and images)

CHUNK_LINE = re.compile(
    r"job (?P<job>\S+): chunk done: (?P<images>\d+) images.*; timings start=(?P<start>[\d.]+) end=(?P<end>[\d.]+) "
    r"total=(?P<total>[\d.]+) (?P<stages>[^\[]*?)(?: \[.*\])?$")  # the text format ends with [ids]
# The worker's per-chunk stages that lie on the critical path (the forward loop's thread), in time-line order.
CHUNK_STAGES = ("plan", "load", "decode_wait", "forward", "ood", "thumb_write", "write")
# Summed over the decode threads, beside the forward passes; cpu: the worker's CPU time over its chunks.
THREAD_STAGES = ("decode", "preprocess", "thumbnail", "cpu")
LABELS = {
    "upload": "upload request (POST until the job is created and enqueued)",
    "upload_archive": "  of which archive reading (in-process estimate)",
    "upload_store": "  of which storing the files (in-process estimate)",
    "queue_wait": "wait for the first chunk (broker, child start / model load)",
    "plan": "chunk plan: database read + attempts update",
    "load": "model lookup / load in the worker",
    "decode_wait": "forward loop waiting for decodes",
    "forward": "forward passes (features included)",
    "ood": "out-of-distribution scoring",
    "thumb_write": "thumbnail writes to storage",
    "write": "result rows + progress (database)",
    "chunk_other": "rest of the chunks (Python between stages)",
    "gaps": "gaps between chunks (ack, broker round trip, task start)",
    "tail": "last chunk until the poll sees the job done",
    "csv": "CSV download",
    "decode": "decode (decode threads, beside the forward)",
    "preprocess": "preprocess: square + tensor (decode threads)",
    "thumbnail": "thumbnail encode (decode threads)",
    "cpu": "worker CPU time over its chunks (all threads; 2 cores: up to 2 x)",
}


@dataclass
class Chunk:
    images: int
    start: float
    end: float
    stages: dict[str, float]


def chunks_of(log_text: str, job_id: str) -> list[Chunk]:
    """The "chunk done" lines of `job_id` in a worker log, in start order."""
    out = []
    for line in log_text.splitlines():
        m = CHUNK_LINE.search(line)
        if m and m["job"] == job_id:
            stages = {k: float(v) for k, v in (kv.split("=", 1) for kv in m["stages"].split())}
            out.append(Chunk(int(m["images"]), float(m["start"]), float(m["end"]), stages))
    return sorted(out, key=lambda c: c.start)


def upload_estimates(zip_path: Path, workdir: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds the web's ingest spends reading the archive and storing its files, best of `repeats`, in-process."""
    from fracture.archive import ZipReader
    from fracture.config import get_settings
    from fracture.storage import Storage
    from web.jobs.ingest import ingest_parts

    settings = get_settings()

    class Part:
        def __init__(self, path: Path) -> None:
            self.filename = path.name
            self.stream = open(path, "rb")  # noqa: SIM115  (closed below)

    def read_only() -> float:
        zips = ZipReader(settings.max_zip_members, settings.max_zip_total_bytes, settings.max_zip_ratio)
        t0 = time.perf_counter()
        with open(zip_path, "rb") as f:
            archive, members, _ = zips.open(f)
            with archive:
                for member in members:
                    with zips.read(archive, member) as src:
                        while src.read(1 << 16):
                            pass
        return time.perf_counter() - t0

    def ingest(i: int) -> float:
        storage = Storage(Path(tempfile.mkdtemp(prefix="ingest-", dir=workdir)))
        part = Part(zip_path)
        try:
            t0 = time.perf_counter()
            ingest_parts([part], storage, settings, f"bench{i}")
            return time.perf_counter() - t0
        finally:
            part.stream.close()

    archive = min(read_only() for _ in range(repeats))
    both = min(ingest(i) for i in range(repeats))
    return {"upload_archive": archive, "upload_store": max(0.0, both - archive)}


def breakdown(run: JobRun, upload: dict[str, float]) -> dict[str, float]:
    """Seconds per row for one job: critical-path rows that add up to its wall time, then the overlapped ones."""
    chunks = run.chunks
    if not chunks:
        raise RuntimeError(f"no 'chunk done' timings of job {run.job_id} in the worker's log")
    # The web enqueues before it answers: the first chunk may start before the response arrives.
    upload_end = min(run.created, chunks[0].start)
    rows: dict[str, float] = {"upload": upload_end - run.posted, **upload}
    rows["queue_wait"] = chunks[0].start - upload_end
    for stage in CHUNK_STAGES:
        rows[stage] = sum(c.stages.get(stage, 0.0) for c in chunks)
    worked = sum(c.end - c.start for c in chunks)
    rows["chunk_other"] = worked - sum(rows[s] for s in CHUNK_STAGES)
    # Time between chunks that no chunk covers (with one worker child, chunks never overlap).
    span = chunks[-1].end - chunks[0].start
    rows["gaps"] = max(0.0, span - worked)
    rows["tail"] = run.done_seen - chunks[-1].end
    rows["csv"] = run.csv_end - run.csv_start
    for stage in THREAD_STAGES:
        rows[stage] = sum(c.stages.get(stage, 0.0) for c in chunks)
    return rows


def chunk_seconds(run: JobRun) -> list[float]:
    """Each chunk's own time, in order, per image (ms), so chunks of different sizes compare."""
    return [1000 * (c.end - c.start) / c.images for c in run.chunks]


def print_table(title: str, run: JobRun, rows: dict[str, float]) -> None:
    wall, n = run.wall, run.images
    print(f"\n{title}: {n} images in {wall:.2f} s = {n / wall:.1f} images/s, {len(run.chunks)} chunks")
    print("| stage | total s | ms/image | share of wall |\n|---|---:|---:|---:|")
    critical = 0.0
    for key, label in LABELS.items():
        if key not in rows:
            continue
        s = rows[key]
        inside = key.startswith("upload_")
        overlapped = key in THREAD_STAGES
        share = f"({100 * s / wall:.1f} %)" if inside or overlapped else f"{100 * s / wall:.1f} %"
        if not inside and not overlapped:
            critical += s
        print(f"| {label} | {s:.3f} | {1000 * s / n:.2f} | {share} |")
        if key == "csv":
            print(f"| **sum of the rows above (= wall)** | {critical:.3f} | {1000 * critical / n:.2f} | "
                  f"{100 * critical / wall:.1f} % |")


def measure(workdir: Path, images: int, jobs: int = 3, concurrency: int = 1) -> dict[str, Any]:
    """Start `fracture up`, run `jobs` jobs of `images` real images; print the tables, return the figures."""
    files = real_images(images, workdir)
    zip_path = make_zip(files, workdir / f"breakdown-{images}.zip")
    upload = upload_estimates(zip_path, workdir)
    t_start = time.time()
    system = System(workdir, concurrency=concurrency)
    up_s = time.time() - t_start
    try:
        runs = [system.run_job(zip_path, images) for _ in range(jobs)]
        log_text = system.worker_log()
    finally:
        system.stop()
    for run in runs:
        run.chunks = chunks_of(log_text, run.job_id)
    loaded = re.search(r"model (\S+) loaded in ([\d.]+) s", log_text)

    fig: dict[str, Any] = {"images": images, "jobs": jobs, "concurrency": concurrency, "up_s": round(up_s, 2),
                           "child_model_load_s": float(loaded[2]) if loaded else None}
    tables = []
    for i, run in enumerate(runs):
        rows = breakdown(run, upload)
        title = "first job of a just-started system" if i == 0 else f"later job {i}"
        print_table(title, run, rows)
        tables.append(rows)
        per_chunk = chunk_seconds(run)
        cpu = [1000 * c.stages.get("cpu", 0.0) / c.images for c in run.chunks]
        fig[f"job{i + 1}"] = {
            "wall_s": round(run.wall, 3), "ips": round(images / run.wall, 2), "chunks": len(run.chunks),
            "first_chunk_ms_per_image": round(per_chunk[0], 2),
            "second_chunk_ms_per_image": round(per_chunk[1], 2) if len(per_chunk) > 1 else None,
            "first_chunk_cpu_ms_per_image": round(cpu[0], 2),
            "second_chunk_cpu_ms_per_image": round(cpu[1], 2) if len(cpu) > 1 else None,
            "median_chunk_ms_per_image": round(statistics.median(per_chunk), 2),
            "rows_s": {k: round(v, 4) for k, v in rows.items()},
        }
    later = [images / r.wall for r in runs[1:]]
    if later:
        fig["first_job_ips"] = round(images / runs[0].wall, 2)
        fig["later_job_ips"] = round(statistics.median(later), 2)
        fig["first_to_later_ratio"] = round(fig["first_job_ips"] / fig["later_job_ips"], 3)
        when = f"loaded at the child's start in {loaded[2]} s" if loaded else "loaded on the first chunk"
        print(f"\nfirst job {fig['first_job_ips']} images/s, later jobs {fig['later_job_ips']} images/s "
              f"(first / later = {fig['first_to_later_ratio']}); model {when}")
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--jobs", type=int, default=3, help="jobs in a row (the first is a just-started system's)")
    p.add_argument("--concurrency", type=int, default=1, help="inference worker children")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-breakdown-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fig = measure(workdir, a.images, a.jobs, a.concurrency)
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
