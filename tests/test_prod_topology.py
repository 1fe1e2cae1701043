"""The production topology, run whole with faults (`make prod-check`): PostgreSQL, redis-server with persistence off,
`fracture db upgrade`, gunicorn with 2 processes, 2 inference workers, the training worker, beat and the DICOM node,
each started from docker-compose.yml's own command (tests/topology.py) over one shared STORAGE_DIR.

Two users post jobs at once while an inference worker is SIGKILLed mid-chunk, PostgreSQL restarts (every connection
dropped), redis restarts empty and the training worker is SIGKILLed mid-run; every status poll meanwhile must be
a 200 or a clear 503. Then: every job done with each image's result exactly once, the killed run failed with a
reason within a minute, a new run done. The figures are printed, and written as JSON to $PROD_CHECK_REPORT if set.

The reaper's thresholds are shortened (REAPER_STALE_S=15, REAPER_INTERVAL_S=5) so that recovery shows in a test's
time; with the defaults (300 s, 60 s) the same recovery takes minutes.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import wait_for
from installation import bearer, image_files, materialize
from sqlalchemy import func, select
from topology import Topology

from fracture.db import session_scope
from fracture.models import Image, Job, Result

pytestmark = pytest.mark.slow

JOBS_PER_USER = 2
IMAGES_PER_CLASS = 12  # x 3 splits x 2 classes = 72 real X-rays per job
DEAD_RUN_DEADLINE_S = 60


class Poller(threading.Thread):
    """A user's script polling their jobs' status as a page does (`job_ids`: a list that grows as jobs are posted),
    or an operator's probes polling `paths`: every answer's code (or "timeout"/"error"), by kind."""

    def __init__(self, url: str, token: str | None, job_ids: list[str], paths: tuple[str, ...] = ()) -> None:
        super().__init__(daemon=True)
        self.url, self.job_ids, self.paths = url, job_ids, paths
        self.headers = bearer(token) if token else {}
        self.codes: Counter[str] = Counter()
        self.by_path: Counter[tuple[str, str]] = Counter()
        self.slowest = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        with requests.Session() as http:
            http.headers.update(self.headers)
            while not self.halt.is_set():
                for path in [f"/api/jobs/{job_id}" for job_id in self.job_ids] + list(self.paths):
                    started = time.monotonic()
                    try:
                        code = str(http.get(f"{self.url}{path}", timeout=15).status_code)
                    except requests.Timeout:
                        code = "timeout"
                    except requests.RequestException as e:
                        code = f"error: {type(e).__name__}"
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.codes[code] += 1
                    self.by_path[(path.split("/")[-1] if path in self.paths else "job", code)] += 1
                time.sleep(0.25)


def _zip(files: list[Path], root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f.relative_to(root).as_posix())
    return buf.getvalue()


def _processed(top: Topology) -> int:
    with session_scope(top.env["DATABASE_URL"]) as s:
        return int(s.scalar(select(func.count(Result.id))) or 0)


def _run(http: requests.Session, url: str, run_id: int) -> dict[str, Any]:
    """The run as the API shows it; {"status": "http <code>"} while the web cannot answer (a restart)."""
    r = http.get(f"{url}/api/trainings/{run_id}", timeout=15)
    if r.status_code != 200:
        return {"status": f"http {r.status_code}"}
    body: dict[str, Any] = r.json()
    return body


def _healthy_after(url: str, part: str, since: float, timeout: float = 120) -> float:
    """Seconds from `since` until /api/health says `part` ("database", "broker") is ok again."""

    def ok() -> bool:
        try:
            return requests.get(f"{url}/api/health", timeout=5).json().get(part) == "ok"
        except (requests.RequestException, ValueError):
            return False

    wait_for(ok, timeout, f"/api/health to find the {part} ok", interval=0.1)
    return round(time.monotonic() - since, 1)


DICOM_IMAGES = 3


def _send_study(top: Topology, sample: Path, folder: Path) -> float:
    """Send a study of three real X-rays to the node with dcmtk's storescu from the peer `PACS`; return the seconds
    until its job is done with a result for each."""
    import shutil
    import subprocess

    from dicom_files import study
    from PIL import Image as PILImage
    from skipping import skip_or_fail

    storescu = shutil.which("storescu")
    if storescu is None:
        skip_or_fail("storescu is not installed (apt-get install dcmtk; scripts/system-deps.sh)")
    assert storescu is not None
    xrays = []
    for path in image_files(sample)[:DICOM_IMAGES]:
        with PILImage.open(path) as im:
            xrays.append(im.convert("L"))
    files = study(xrays, accession="PROD-CHECK")
    folder.mkdir()
    paths = []
    for n, made in enumerate(files, start=1):
        paths.append(folder / f"IM{n:06d}")
        paths[-1].write_bytes(made.data)
    started = time.monotonic()
    sent = subprocess.run([storescu, "-aet", "PACS", "-aec", "FRACTURE", "127.0.0.1", str(top.dicom_port),
                           *map(str, paths)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def classified() -> bool:
        with session_scope(top.env["DATABASE_URL"]) as s:
            job_ids = set(s.scalars(select(Image.job_id).where(Image.study_instance_uid == files[0].study_uid)))
            if len(job_ids) != 1:
                return False
            job = s.get(Job, job_ids.pop())
            results = s.scalar(select(func.count(Result.id)).where(Result.job_id == job.id))  # type: ignore[union-attr]
            return job is not None and job.status == "done" and results == DICOM_IMAGES

    wait_for(classified, 120, f"the study's job to be classified\n{top.procs['dicom-node'].log_text()}")
    return round(time.monotonic() - started, 1)


def _samples(text: str) -> dict[str, float]:
    """The Prometheus text format's samples: 'name{labels}' -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_production_topology_survives_worker_database_broker_and_trainer_faults(
    dataset_root: Path, tmp_path: Path,
) -> None:
    top = Topology(tmp_path / "home", overrides={
        "REAPER_STALE_S": "15", "REAPER_INTERVAL_S": "5", "CHUNK_SIZE": "6", "BATCH_SIZE": "6",
        "FRACTURE_DEVICE": "cpu", "TORCH_THREADS": "1", "DICOM_PEERS": "PACS@127.0.0.1:11113",
        "DATASET_ROOTS": str(tmp_path / "home" / "datasets"), "DICOM_STUDY_QUIET_S": "3",
    })
    report: dict[str, Any] = {"faults": []}
    began = time.monotonic()
    try:
        top.start()
        report["start_s"] = round(time.monotonic() - began, 1)
        users = {}
        for name, admin in (("alice", True), ("bob", False)):
            made = top.fracture("users", "create", name, "--json", *(["--admin"] if admin else []))
            assert made.returncode == 0, made.stderr
            users[name] = json.loads(made.stdout)["token"]
        alice = requests.Session()
        alice.headers.update(bearer(users["alice"]))
        url = top.url

        # A training dataset, validated by the training worker; a long run to kill, started before the jobs.
        data = materialize(dataset_root, tmp_path / "home" / "datasets" / "multi", per_class=12)
        posted = alice.post(f"{url}/api/datasets", json={"path": str(data), "name": "multi"}, timeout=30)
        assert posted.status_code == 201, posted.text
        dataset = wait_for(lambda: (b := alice.get(f"{url}/api/datasets/{posted.json()['id']}", timeout=15).json())
                           ["status"] != "validating" and b, 180, "the dataset to validate")
        assert isinstance(dataset, dict) and dataset["status"] == "ready", dataset
        recipe = {"dataset_ids": [dataset["id"]], "width": 8, "image_size": 64}
        doomed = alice.post(f"{url}/api/trainings", json={**recipe, "epochs": 500}, timeout=30)
        assert doomed.status_code in (201, 202), doomed.text
        doomed_id = doomed.json()["id"]

        # Two users, two jobs each, posted at once.
        sample = materialize(dataset_root, tmp_path / "sample", per_class=IMAGES_PER_CLASS)
        archive = _zip(image_files(sample), sample.parent)
        per_job = len(image_files(sample))
        jobs: dict[str, list[str]] = {name: [] for name in users}

        post_codes: Counter[int] = Counter()

        def post(name: str, delay: float) -> None:
            time.sleep(delay)
            for _ in range(30):  # a script retries a clear 503 (the database or the broker restarting)
                r = requests.post(f"{url}/api/jobs", headers=bearer(users[name]), timeout=120,
                                  files=[("files", (f"{name}.zip", archive))])
                post_codes[r.status_code] += 1
                if r.status_code != 503:
                    break
                time.sleep(1)
            assert r.status_code == 201, r.text
            jobs[name].append(r.json()["id"])

        # The posts go on while the faults come: the second of each user's jobs is posted a few seconds later.
        posters = [threading.Thread(target=post, args=(name, 4.0 * i)) for name in users for i in range(JOBS_PER_USER)]
        for poster in posters:
            poster.start()
        pollers = [Poller(url, users[name], jobs[name]) for name in users]
        # The operator's probes: the health check a load balancer polls, and Prometheus's scrape.
        pollers += [Poller(url, None, [], ("/api/health",)), Poller(url, top.env["METRICS_TOKEN"], [], ("/metrics",))]
        for p in pollers:
            p.start()

        # Fault 1: an inference worker SIGKILLed mid-chunk (its results have started), restarted as docker would.
        wait_for(lambda: _processed(top) > 0, 180, "the first results", interval=0.05)
        top.sigkill("worker-1")
        at = _processed(top)
        report["faults"].append({"fault": "SIGKILL inference worker-1 mid-chunk", "results_before": at})
        fault1 = report["faults"][-1]
        restarter = threading.Thread(
            target=lambda: fault1.update(restarted_ready_after_s=round(top.restart_service("worker-1"), 1)))
        restarter.start()

        # Fault 2: PostgreSQL restarts; every open connection is dropped.
        t = time.monotonic()
        top.postgres.restart()
        report["faults"].append({"fault": "PostgreSQL restart (-m fast)", "restart_s": round(time.monotonic() - t, 1),
                                 "web_database_ok_after_s": _healthy_after(url, "database", t)})

        # Fault 3: redis-server restarts empty: every queued chunk message is gone.
        redis_at = time.monotonic()
        top.restart_redis_empty()
        before = _processed(top)
        report["faults"].append({"fault": "redis-server restart, empty",
                                 "restart_s": round(time.monotonic() - redis_at, 1),
                                 "web_broker_ok_after_s": _healthy_after(url, "broker", redis_at)})

        # Fault 4: the training worker SIGKILLed mid-run.
        wait_for(lambda: _run(alice, url, doomed_id)["status"] == "running", 120, "the long run to be running")
        top.sigkill("trainer")
        killed_at = time.monotonic()
        top.restart_service("trainer")
        watch: dict[str, Any] = {}

        def watch_run() -> None:  # polls the killed run while the jobs finish
            with requests.Session() as http:
                http.headers.update(bearer(users["alice"]))
                while time.monotonic() - killed_at < DEAD_RUN_DEADLINE_S + 60:
                    r = _run(http, url, doomed_id)
                    if r["status"] in ("failed", "done", "cancelled"):
                        watch.update(run=r, after_s=time.monotonic() - killed_at)
                        return
                    time.sleep(0.5)

        watcher = threading.Thread(target=watch_run, daemon=True)
        watcher.start()
        restarter.join()
        for poster in posters:
            poster.join()
        assert sum(map(len, jobs.values())) == len(posters)
        report["job_posts"] = dict(post_codes)

        # Every job done, every image's result exactly once.
        all_ids = [j for ids in jobs.values() for j in ids]

        def all_done() -> bool:
            with session_scope(top.env["DATABASE_URL"]) as s:
                return all(s.get(Job, j).status in ("done", "failed", "cancelled") for j in all_ids)  # type: ignore[union-attr]

        wait_for(all_done, 420, f"every job to finish\n{top.logs()}", interval=1)
        report["all_jobs_done_s_after_redis_restart"] = round(time.monotonic() - redis_at, 1)
        report["results_after_redis_restart"] = _processed(top) - before
        for p in pollers:
            p.halt.set()
        for p in pollers:
            p.join(timeout=30)

        with session_scope(top.env["DATABASE_URL"]) as s:
            for job_id in all_ids:
                job = s.get(Job, job_id)
                assert job is not None and job.status == "done", (job_id, job and job.status, job and job.error)
                images = s.scalar(select(func.count(Image.id)).where(Image.job_id == job_id))
                per_image = dict(s.execute(select(Result.image_id, func.count(Result.id))
                                           .where(Result.job_id == job_id).group_by(Result.image_id)).all())
                assert images == per_job and job.total == per_job
                assert len(per_image) == per_job, f"{job_id}: {per_job - len(per_image)} images without a result"
                assert set(per_image.values()) == {1}, f"{job_id}: an image with more than one result"
        watcher.join(timeout=max(0.0, DEAD_RUN_DEADLINE_S + 60 - (time.monotonic() - killed_at)))
        failed, dead_after = watch.get("run", {}), watch.get("after_s", float("inf"))
        report["faults"].append({"fault": "SIGKILL training worker mid-run",
                                 "marked_failed_after_s": round(dead_after, 1), "status": failed.get("status"),
                                 "reason": failed.get("error")})
        codes = sum((p.codes for p in pollers), Counter())
        by_kind = sum((p.by_path for p in pollers), Counter())
        report.update(jobs=len(all_ids), images=len(all_ids) * per_job,
                      polls={f"{kind} {code}": n for (kind, code), n in sorted(by_kind.items())},
                      slowest_poll_s=round(max(p.slowest for p in pollers), 2))
        report["5xx"] = sum(n for c, n in codes.items() if c.startswith("5"))
        report["5xx_not_503"] = sum(n for c, n in codes.items() if c.startswith("5") and c != "503")
        assert set(codes) <= {"200", "503"}, f"status polls answered {dict(codes)}"
        assert failed["status"] == "failed" and failed.get("error"), failed
        assert dead_after <= DEAD_RUN_DEADLINE_S, f"the killed run was marked failed after {dead_after:.0f} s"

        # A new run on the same topology succeeds.
        t = time.monotonic()
        fresh = alice.post(f"{url}/api/trainings", json={**recipe, "dry_run": True}, timeout=30)
        assert fresh.status_code in (201, 202), fresh.text
        done = wait_for(lambda: (r := _run(alice, url, fresh.json()["id"]))["status"] in ("done", "failed") and r,
                        300, "the new run to finish")
        assert isinstance(done, dict) and done["status"] == "done", done
        report["new_run_s"] = round(time.monotonic() - t, 1)

        # The DICOM node came through the faults: a study sent by a real sender (dcmtk) becomes a classified job.
        report["dicom_study_job_s"] = _send_study(top, sample, tmp_path / "study")
        assert top.procs["dicom-node"].alive(), top.procs["dicom-node"].log_text()

        # What an operator's Prometheus reads agrees with the database.
        metrics = requests.get(f"{url}/metrics", headers=bearer(top.env["METRICS_TOKEN"]), timeout=30)
        assert metrics.status_code == 200, metrics.text
        values = _samples(metrics.text)
        assert values["fracture_images_classified_total"] == len(all_ids) * per_job + DICOM_IMAGES, values
        assert values['fracture_jobs{status="done"}'] == len(all_ids) + 1
        assert values['fracture_training_runs{status="failed"}'] == 1
        chunks = sum(v for k, v in values.items() if k.startswith("fracture_chunk_seconds_count"))
        assert chunks >= len(all_ids) * per_job / 6, values
        report["metrics"] = {"images_classified": values["fracture_images_classified_total"], "chunks": chunks}

        health = requests.get(f"{url}/api/health", timeout=15).json()
        assert health["database"] == "ok" and health["broker"] == "ok", health
        report["workers_answering"] = len(health["workers"]["workers"])
        report["total_s"] = round(time.monotonic() - began, 1)
    finally:
        print("\n== prod-check ==\n" + json.dumps(report, indent=2))
        if os.environ.get("PROD_CHECK_REPORT"):
            Path(os.environ["PROD_CHECK_REPORT"]).write_text(json.dumps(report, indent=2))
        top.stop()
