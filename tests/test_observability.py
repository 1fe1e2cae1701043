"""Issue 22's latency histograms and logs: counted in the database so every process answers the same; one line per
event with the job's id, JSON under LOG_FORMAT=json, from a real gunicorn and a real worker."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import LiveSystem, Proc, wait_for
from installation import REPO_ROOT, bearer, new_installation
from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from prometheus_client.parser import text_string_to_metric_families

from fracture import latency, logs
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, get_engine, session_scope
from fracture.migrate import upgrade
from web import create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HISTOGRAMS = tuple(h.name for h in latency.HISTOGRAMS)


def histogram_samples(text: str) -> Samples:
    """The samples of the latency histograms in a /metrics answer."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) if family.name in HISTOGRAMS for s in family.samples}


def buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one series, in bound order."""
    want = set(labels.items())
    rows = [(float(dict(k)["le"]), v) for (n, k), v in samples.items()
            if n == f"{name}_bucket" and want <= set(k)]
    return sorted(rows)


def assert_cumulative(samples: Samples, name: str, count: float, **labels: str) -> None:
    series = buckets(samples, name, **labels)
    counts = [c for _, c in series]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {series}"
    assert series[-1] == (float("inf"), count)
    assert samples[(f"{name}_count", tuple(sorted(labels.items())))] == count


def metrics_text(settings: Settings) -> str:
    """/metrics from a fresh app instance of this process (the test client is loopback: no token needed)."""
    answer = create_app({"FRACTURE_SETTINGS": settings, "TESTING": True}).test_client().get("/metrics")
    assert answer.status_code == 200, answer.data[:300]
    return answer.get_data(as_text=True)


def metrics_in_a_fresh_process(env: dict[str, str]) -> str:
    code = ("from web import create_app; import sys; "
            "sys.stdout.write(create_app({'TESTING': True}).test_client().get('/metrics').get_data(as_text=True))")
    done = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_observations_become_cumulative_buckets_that_every_app_instance_reads_alike(
    settings: Settings, fracture_env: dict[str, str],
) -> None:
    timings = [0.03, 0.2, 0.2, 4.0, 400.0]  # the last one above every bound: only in +Inf
    for seconds in timings:
        with session_scope(settings.database_url) as session:
            latency.observe_chunk(session, seconds, 8, "cpu")
    with session_scope(settings.database_url) as session:
        latency.observe_chunk(session, 0.1, 64, "cuda")

    first = histogram_samples(metrics_text(settings))
    assert_cumulative(first, "fracture_chunk_seconds", 5, device="cpu")
    assert_cumulative(first, "fracture_chunk_seconds", 1, device="cuda")
    assert_cumulative(first, "fracture_image_seconds", 5 * 8, device="cpu")
    assert first[("fracture_chunk_seconds_sum", (("device", "cpu"),))] == pytest.approx(sum(timings))
    assert first[("fracture_image_seconds_sum", (("device", "cuda"),))] == pytest.approx(0.1)
    cpu = dict(buckets(first, "fracture_chunk_seconds", device="cpu"))
    assert (cpu[0.05], cpu[0.1], cpu[0.25], cpu[5.0], cpu[120.0]) == (1, 1, 3, 4, 4)
    # No job ended yet: the unlabelled families are there, the labelled one has no series.
    assert not any(name.startswith("fracture_job_seconds") for name, _ in first)

    assert histogram_samples(metrics_text(settings)) == first  # a second app instance
    assert histogram_samples(metrics_in_a_fresh_process(fracture_env)) == first  # another process


def test_concurrent_observations_on_postgresql_lose_no_count(pg_url: str) -> None:  # noqa: F811
    upgrade(pg_url)
    per_thread, threads = 25, 8

    def observe() -> None:
        for i in range(per_thread):
            with session_scope(pg_url) as session:
                latency.observe_chunk(session, 0.5 + (i % 3), 4, "cuda")

    workers = [threading.Thread(target=observe) for _ in range(threads)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        with session_scope(pg_url) as session:
            families = {f.name: f for f in latency.families(session)}
    finally:
        get_engine(pg_url).dispose()  # closed, not only forgotten: the server is dropped after the test
    chunk = {(s.name, s.labels.get("le")): s.value for s in families["fracture_chunk_seconds"].samples}
    assert chunk[("fracture_chunk_seconds_count", None)] == per_thread * threads
    assert chunk[("fracture_chunk_seconds_bucket", "+Inf")] == per_thread * threads
    image = {s.name: s.value for s in families["fracture_image_seconds"].samples}
    assert image["fracture_image_seconds_count"] == per_thread * threads * 4


def test_the_json_format_has_the_same_fields_everywhere_and_the_contexts_ids() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logs.configure(get_settings({"LOG_FORMAT": "json"}), "worker", stream=out)
        log = logging.getLogger("fracture.test")
        with logs.bound(job_id="abc", task_id="t-1"):
            log.info("chunk done: %d images", 3, extra={"images": 3, "seconds": 0.5})
        log.warning("training run %d failed", 7, extra={"run_id": 7})
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("evaluation %d failed", 2, extra={"evaluation_id": 2})
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
    chunk, run, failed = (json.loads(line) for line in out.getvalue().splitlines())
    assert {"ts", "level", "logger", "process", "pid", "message"} <= set(chunk)
    assert chunk["ts"].endswith("Z") and chunk["process"] == "worker" and chunk["logger"] == "fracture.test"
    assert (chunk["job_id"], chunk["task_id"], chunk["images"], chunk["seconds"]) == ("abc", "t-1", 3, 0.5)
    assert "job_id" not in run and run["run_id"] == 7 and run["level"] == "WARNING"
    assert failed["evaluation_id"] == 2 and "ValueError: bad" in failed["exc_info"]
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        get_settings({"LOG_FORMAT": "xml"})


def test_a_web_request_logs_with_the_job_id_of_its_url(settings: Settings, fracture_env: dict[str, str]) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    app = create_app({"FRACTURE_SETTINGS": settings, "TESTING": True})

    @app.get("/jobs/<job_id>/probe")
    def probe(job_id: str) -> str:
        logging.getLogger("web.probe").info("looked at")
        return "ok"

    try:
        logs.configure(dataclasses.replace(settings, log_format="text"), "web", stream=out)  # ids in brackets
        signed_in = bearer(fracture_env["FRACTURE_TEST_TOKEN"])
        assert app.test_client().get("/jobs/f00d/probe", headers=signed_in).status_code == 200
        logging.getLogger("web.probe").info("after the request")
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])
    during, after = out.getvalue().splitlines()[-2:]
    assert " INFO web/MainProcess web.probe: looked at [job_id=f00d]" in during
    assert after.endswith("web.probe: after the request")  # the request's ids went with it


# ---------------------------------------------------------------- a live system logging JSON


@pytest.fixture
def fracture_env(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, str]:
    """The installation of every test here logs JSON, in chunks of 2 images (the live system's too)."""
    return {**new_installation(tmp_path / "home", tiny_checkpoint), "LOG_FORMAT": "json", "CHUNK_SIZE": "2"}


def json_lines(text: str) -> list[dict[str, object]]:
    """The log lines that are JSON objects; fail on a line that looks like one and is not."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_a_live_worker_and_gunicorn_log_json_with_the_jobs_id_and_count_its_chunks(
    live_system: LiveSystem, sample_images: list[Path],
) -> None:
    images = sample_images[:5]
    files = [("files", (f"m/{n}.png", p.read_bytes())) for n, p in enumerate(images)]
    posted = live_system.http.post(f"{live_system.url}/api/jobs", files=files, timeout=60)
    assert posted.status_code == 201, posted.text
    job_id = posted.json()["id"]
    wait_for(lambda: live_system.http.get(f"{live_system.url}/api/jobs/{job_id}", timeout=10).json()["status"]
             == "done", 120, "the job to finish")

    # The worker: every log line after its banner is one JSON object; the chunks' and the job's lines carry its id.
    def whole(proc: Proc) -> str:
        return proc.log.read_text(errors="replace")

    wait_for(lambda: sum(line.get("job_id") == job_id and "chunk done" in str(line["message"])
                         for line in json_lines(whole(live_system.worker))) == 3, 20, "3 chunk lines")
    worker_text = whole(live_system.worker)
    after_banner = worker_text.split("[tasks]", 1)[1].split("\n\n", 1)[1]
    lines = [line for line in after_banner.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), after_banner[:3000]
    worker_lines = json_lines(after_banner)
    assert all({"ts", "level", "logger", "process", "message"} <= set(line) for line in worker_lines)
    chunks = [line for line in worker_lines if line.get("job_id") == job_id and "chunk done" in str(line["message"])]
    assert sum(int(line["images"]) for line in chunks) == 5  # type: ignore[call-overload]
    assert all(line["process"] == "worker" and line["task_name"] == "inference.classify_chunk" and line["task_id"]
               and float(line["seconds"]) > 0 for line in chunks)  # type: ignore[arg-type]
    assert any(line.get("job_id") == job_id and str(line["message"]).startswith(f"job {job_id} done")
               for line in worker_lines)
    ready = [line for line in worker_lines if str(line["message"]).endswith(" ready.")]
    assert ready, "the worker's own lines (Celery's) are JSON too"

    # The web (gunicorn, its master's own lines included): JSON; the job's creation carries its id.
    web_lines = [line for line in whole(live_system.web).splitlines() if line.strip()]
    assert web_lines and all(line.startswith("{") for line in web_lines), web_lines[:10]
    created = [line for line in json_lines(whole(live_system.web))
               if line.get("job_id") == job_id and "created" in str(line["message"])]
    assert len(created) == 1 and created[0]["process"] == "web" and created[0]["images"] == 5, \
        live_system.web.log_text()[-3000:]

    # /metrics: 3 chunks of the job, 5 images, one job done; the same from gunicorn, another app and process.
    served = live_system.http.get(f"{live_system.url}/metrics", timeout=30)
    assert served.status_code == 200
    got = histogram_samples(served.text)
    assert_cumulative(got, "fracture_chunk_seconds", 3, device="cpu")
    assert_cumulative(got, "fracture_image_seconds", 5, device="cpu")
    assert_cumulative(got, "fracture_job_seconds", 1, status="done")
    assert got[("fracture_chunk_seconds_sum", (("device", "cpu"),))] > 0
    settings = get_settings(live_system.env)
    assert histogram_samples(metrics_text(settings)) == got
    assert histogram_samples(metrics_in_a_fresh_process(live_system.env)) == got
    dispose_engines()
