"""DICOM node benchmark: intake rate over one association and one association per instance, and the time from the
last instance of a study to its report stored in a real PACS (Orthanc).

    .venv/bin/python bench/dicom.py                    # 100 images, quiet 2 s, heatmap captures on, then off
    .venv/bin/python bench/dicom.py --n 20 --width 320 # a quick look on test-sized files
    .venv/bin/python bench/dicom.py --no-heatmaps      # only DICOM_SEND_HEATMAPS=0

A throwaway installation (tests/installation.py's `new_installation`, the shipped release model) runs `fracture up`
with its DICOM node (DICOM_PORT), DICOM_PEERS naming the sender and Orthanc, DICOM_SEND_RESULTS_TO=ORTHANC and a
short DICOM_STUDY_QUIET_S; Orthanc (tests/orthanc.py) runs on free ports. The files are DX instances made with
tests/dicom_files.py from real X-rays of the first dataset: by default its large grayscale radiographs (long side
at least 1,500 px) at their own size, 8-bit as the dataset holds them (`--width N` scales them to N columns, as the
tests' `small` does). A 3-image study goes first and is waited for, so the worker has loaded the model.

Each measured study is one call of dcmtk's `storescu` with all N files (one association), or N calls of one file
each (one association per instance, the process start of each storescu included, as a sender that opens one per
instance pays it too). The clock stops when storescu exits: the last instance was acknowledged (the node answers
success once the file is synced and its row committed). The time to report runs from then until Orthanc's REST API
shows the study's SR (and until every heatmap capture is there), polled every 0.1 s; the database's timestamps
break it down. Each study's report is waited for before the next study is sent, so no classification runs during
an intake measurement. Prints a table; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from dicom_files import dicom_file, small  # noqa: E402  (the tests' DICOM files)
from harness import Proc, free_port, start_fracture_up, wait_for  # noqa: E402  (the tests' process harness)
from installation import new_installation  # noqa: E402
from orthanc import Orthanc, running_orthanc  # noqa: E402

DATASET = Path(os.environ.get("FRACTURE_DATASET", REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"))
MODEL = REPO / "fracture" / "release" / "model.pt"
SENDER = "MODALITY"
MB = 1e6


def xray_paths(n: int, min_side: int) -> list[Path]:
    """`n` distinct grayscale X-rays of the dataset with a long side of at least `min_side` px, in MD5 order (cycling
    when there are fewer)."""
    with open(DATASET / "manifest.csv", newline="") as f:
        md5s = sorted({row["md5"] for row in csv.DictReader(f)})
    found = []
    for md5 in md5s:
        with Image.open(DATASET / "blobs" / md5) as im:
            if im.mode == "L" and max(im.size) >= min_side:
                found.append(DATASET / "blobs" / md5)
        if len(found) == n:
            break
    if not found:
        raise SystemExit(f"no grayscale X-ray of {min_side}+ px in {DATASET}")
    return [found[i % len(found)] for i in range(n)]


def pixel_arrays(paths: list[Path], width: int) -> list[np.ndarray]:
    out = []
    for path in paths:
        with Image.open(path) as im:
            gray = im.convert("L")
            out.append(np.asarray(small(gray, width) if width else gray))
    return out


def write_study(pixels: list[np.ndarray], folder: Path, accession: str) -> tuple[str, list[Path]]:
    """One study of DX files (new UIDs) under `folder`; its Study Instance UID and the files."""
    from pydicom import uid

    study_uid = str(uid.generate_uid())
    folder.mkdir(parents=True)
    paths = []
    for n, array in enumerate(pixels, start=1):
        made = dicom_file(array, StudyInstanceUID=study_uid, AccessionNumber=accession, StudyDate="20261204",
                          InstanceNumber=n)
        paths.append(folder / f"IM{n:04d}")
        paths[-1].write_bytes(made.data)
    return study_uid, paths


def storescu(port: int, files: list[Path]) -> None:
    args = [shutil.which("storescu") or "storescu", "-aet", SENDER, "-aec", "FRACTURE", "127.0.0.1", str(port),
            *map(str, files)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stdout}{done.stderr}")


def send(port: int, files: list[Path], per_instance: bool) -> tuple[float, datetime]:
    """Send `files` in one association or one each; (seconds, when the last instance was acknowledged)."""
    t0 = time.perf_counter()
    if per_instance:
        for f in files:
            storescu(port, [f])
    else:
        storescu(port, files)
    return time.perf_counter() - t0, datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def job_times(env: dict[str, str], study_uid: str, captures: bool = False) -> dict[str, Any] | None:
    """The study's job and deliveries, once every delivery was acknowledged (with `captures`, also one capture of
    each image called fractured: they come after the SR, from their own task); None before."""
    from sqlalchemy import func, select

    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.models import Delivery, Job, ReceivedInstance, Result

    with session_scope(get_settings(env).database_url) as session:
        job_id, last = session.execute(
            select(func.max(ReceivedInstance.job_id), func.max(ReceivedInstance.received_at))
            .where(ReceivedInstance.study_instance_uid == study_uid)).one()
        job = session.get(Job, job_id) if job_id else None
        if job is None or job.reported_at is None:
            return None
        rows = list(session.scalars(select(Delivery).where(Delivery.job_id == job.id)))
        if not rows or any(r.sent_at is None for r in rows):
            return None
        fractured = session.scalar(select(func.count(Result.id)).where(Result.job_id == job.id,
                                                                        Result.prediction == "fractured"))
        if captures and len(rows) - 1 < (fractured or 0):
            return None
        report = next(r for r in rows if r.kind == "report")
        return {
            "last_received": _utc(last), "created": _utc(job.created_at), "started": _utc(job.started_at),
            "finished": _utc(job.finished_at), "reported": _utc(job.reported_at),
            "planned": _utc(min(r.created_at for r in rows)), "report_sent": _utc(report.sent_at),
            "all_sent": _utc(max(r.sent_at for r in rows if r.sent_at)),
            "captures": len(rows) - 1, "fractured": fractured or 0, "status": job.status,
        }


def in_orthanc(orthanc: Orthanc, study_uid: str) -> tuple[int, int]:
    """(SR instances, other instances) Orthanc holds of the study (only our results are ever sent to it)."""
    found = requests.post(f"{orthanc.url}/tools/lookup", data=study_uid, timeout=10).json()
    study = next((x["ID"] for x in found if x.get("Type") == "Study"), None)
    if study is None:
        return 0, 0
    sr = other = 0
    for series in orthanc.get(f"/studies/{study}/series"):
        count = len(series.get("Instances", []))
        if series.get("MainDicomTags", {}).get("Modality") == "SR":
            sr += count
        else:
            other += count
    return sr, other


def measure_study(env: dict[str, str], orthanc: Orthanc, port: int, study_uid: str, files: list[Path],
                  per_instance: bool, timeout: float = 1800) -> dict[str, Any]:
    captures = env.get("DICOM_SEND_HEATMAPS") != "0"
    """Send one study, then follow it until its SR and every capture are in Orthanc."""
    size = sum(f.stat().st_size for f in files)
    seconds, acked = send(port, files, per_instance)
    t_ack = time.perf_counter()
    sr_at = all_at = None
    deadline = t_ack + timeout
    while all_at is None:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"study {study_uid}: no report in Orthanc after {timeout:.0f} s")
        sr, other = in_orthanc(orthanc, study_uid)
        now = time.perf_counter()
        if sr and sr_at is None:
            sr_at = now - t_ack
        if sr_at is not None:
            times = job_times(env, study_uid, captures)
            if times is not None and other >= times["captures"]:
                all_at = now - t_ack
        time.sleep(0.1)
    times = wait_for(lambda: job_times(env, study_uid, captures), 60, "the job's timestamps")
    assert isinstance(times, dict)

    def gap(a: str, b: str) -> float:
        return float((times[b] - times[a]).total_seconds())

    acked_s = (acked - times["last_received"]).total_seconds()
    return {
        "instances": len(files), "mb": size / MB, "intake_s": seconds, "ips": len(files) / seconds,
        "mbps": size / MB / seconds, "sr_in_orthanc_s": sr_at, "all_in_orthanc_s": all_at,
        "fractured": times["fractured"], "captures": times["captures"], "job_status": times["status"],
        # From the node's commit of the last instance (a few ms before storescu saw its answer and exited).
        "ack_after_last_commit_s": acked_s,
        "quiet_s": gap("last_received", "created"), "queued_s": gap("created", "started"),
        "classify_s": gap("started", "finished"), "report_wait_s": gap("finished", "reported"),
        "build_s": gap("reported", "planned"), "sr_delivery_s": gap("planned", "report_sent"),
        "all_delivered_s": gap("planned", "all_sent"),
    }


class Node:
    """`fracture up` with its DICOM node in a throwaway installation, sending results to `orthanc`."""

    def __init__(self, workdir: Path, orthanc: Orthanc, quiet_s: int, heatmaps: bool) -> None:
        env = new_installation(Path(tempfile.mkdtemp(prefix="home-", dir=workdir)) / "home", MODEL)
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the tests' one-thread setting: serve as deployed instead
            env.pop(k, None)
        self.port, web = free_port(), free_port()
        env.update(DICOM_PORT=str(self.port), DICOM_STUDY_QUIET_S=str(quiet_s), DICOM_SEND_RESULTS_TO="ORTHANC",
                   DICOM_PEERS=f"{SENDER}@127.0.0.1:104,ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                   DICOM_SEND_HEATMAPS="1" if heatmaps else "0", FRACTURE_WEB_PORT=str(web))
        self.env = env
        self.proc: Proc = start_fracture_up(env, web, Path(env["FRACTURE_HOME"]) / "logs", name="up")
        log = Path(env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
        try:
            wait_for(lambda: "listening on port" in log.read_text(errors="replace"), 60, "the DICOM node")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        from fracture.db import dispose_engines

        self.proc.stop(timeout=60, sig=signal.SIGINT)
        dispose_engines()


def run_node(workdir: Path, orthanc: Orthanc, pixels: list[np.ndarray], warm: list[np.ndarray], quiet_s: int,
             heatmaps: bool, per_instance: bool) -> dict[str, dict[str, Any]]:
    tag = "on" if heatmaps else "off"
    node = Node(workdir, orthanc, quiet_s, heatmaps)
    out = {}
    try:
        uid, files = write_study(warm, workdir / f"warm-{tag}", f"WARM-{tag}")
        measure_study(node.env, orthanc, node.port, uid, files, per_instance=False)  # the worker loads the model
        uid, files = write_study(pixels, workdir / f"one-{tag}", f"ONE-{tag}")
        out["one"] = measure_study(node.env, orthanc, node.port, uid, files, per_instance=False)
        if per_instance:
            uid, files = write_study(pixels, workdir / f"each-{tag}", f"EACH-{tag}")
            out["each"] = measure_study(node.env, orthanc, node.port, uid, files, per_instance=True)
    finally:
        node.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="instances per study (default 100)")
    p.add_argument("--quiet-s", type=int, default=2, help="DICOM_STUDY_QUIET_S (default 2)")
    p.add_argument("--no-heatmaps", action="store_true", help="only DICOM_SEND_HEATMAPS=0 (default: on, then off)")
    p.add_argument("--width", type=int, default=0, help="scale the X-rays to this many columns (default: own size)")
    p.add_argument("--min-side", type=int, default=1500, help="the smallest long side of an X-ray used (px)")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/system-deps.sh)")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-bench-dicom-"))
    workdir.mkdir(parents=True, exist_ok=True)

    paths = xray_paths(a.n, a.min_side)
    pixels = pixel_arrays(paths, a.width)
    warm = pixels[:3]
    fig: dict[str, Any] = {"instances": a.n, "quiet_s": a.quiet_s, "cpus": os.cpu_count() or 0,
                           "distinct_xrays": len(set(paths)), "width": a.width or "own",
                           "median_pixels": int(np.median([x.size for x in pixels]))}
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    with running_orthanc(workdir / "orthanc") as orthanc:
        if not a.no_heatmaps:
            runs["on"] = run_node(workdir, orthanc, pixels, warm, a.quiet_s, heatmaps=True, per_instance=True)
        runs["off"] = run_node(workdir, orthanc, pixels, warm, a.quiet_s, heatmaps=False,
                               per_instance=a.no_heatmaps)

    first = runs["on" if "on" in runs else "off"]
    one, each = first["one"], first["each"]
    fig["study_mb"] = one["mb"]
    fig["one_association_ips"], fig["one_association_mbps"] = one["ips"], one["mbps"]
    fig["per_instance_ips"], fig["per_instance_mbps"] = each["ips"], each["mbps"]
    fig["ratio_one_to_per_instance"] = one["ips"] / each["ips"]
    for tag, run in runs.items():
        for how, m in run.items():
            for k, v in m.items():
                fig[f"heatmaps_{tag}_{how}_{k}"] = v

    n = a.n
    rows = [
        (f"intake, one association ({n} instances, {one['mb']:.0f} MB)",
         f"{one['ips']:.1f} inst/s, {one['mbps']:.1f} MB/s", f"{fig['ratio_one_to_per_instance']:.2f} x per instance"),
        (f"intake, one association per instance (storescu per file, {n})",
         f"{each['ips']:.1f} inst/s, {each['mbps']:.1f} MB/s", "1.00 x per instance"),
    ]
    for tag, run in runs.items():
        for how, m in run.items():
            label = f"heatmaps {tag}, {'one association' if how == 'one' else 'one per instance'}"
            rows += [
                (f"time to report ({label}): SR in Orthanc", f"{m['sr_in_orthanc_s']:.1f} s",
                 f"{m['fractured']} of {n} called fractured"),
                ("  of which quiet period (last instance stored to job made)", f"{m['quiet_s']:.1f} s",
                 f"DICOM_STUDY_QUIET_S={a.quiet_s}"),
                ("  job queued (made to started)", f"{m['queued_s']:.1f} s", ""),
                ("  classification (started to finished)", f"{m['classify_s']:.1f} s",
                 f"{n / m['classify_s']:.0f} img/s" if m["classify_s"] else ""),
                ("  report task queued (finished to claimed)", f"{m['report_wait_s']:.1f} s", ""),
                ("  SR built (claimed to its delivery recorded)", f"{m['build_s']:.1f} s", ""),
                ("  SR delivered (C-STORE to Orthanc)", f"{m['sr_delivery_s']:.2f} s", ""),
                (f"every capture in Orthanc ({label})", f"{m['all_in_orthanc_s']:.1f} s",
                 f"all delivered {m['all_delivered_s']:.1f} s after built"),
            ]
    print("| row | figure | note |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}, default=str))


if __name__ == "__main__":
    main()
