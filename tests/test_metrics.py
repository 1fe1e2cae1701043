"""`/metrics`: the Prometheus text format computed from the database and the broker at scrape time, behind
METRICS_TOKEN (or this machine only when it is unset); and a real Prometheus scraping a live system."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import requests
from flask.testing import FlaskClient
from harness import LiveSystem, free_port, start_proc, wait_for
from prometheus_client.parser import text_string_to_metric_families
from skipping import skip_or_fail
from web_client import post_files

from fracture.config import Settings
from web import create_app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_the_database_holds_and_want_their_token(
    client: FlaskClient, settings: Settings, sample_images: list[Path],
) -> None:
    post_files(client, [(p.read_bytes(), f"m/{n}.png") for n, p in enumerate(sample_images[:3])])
    local = client.get("/metrics")  # no METRICS_TOKEN: this machine may scrape
    assert local.status_code == 200 and local.mimetype == "text/plain", local.data[:200]
    got = samples(local.get_data(as_text=True))
    assert got[("fracture_jobs", (("status", "queued"),))] == 1
    assert got[("fracture_images_classified_total", ())] == 0
    assert got[("fracture_active_model_info", (("arch", "fracnet"), ("name", "v1"), ("threshold", "0.5")))] == 1
    assert ("fracture_queue_messages", (("queue", "inference"),)) in got
    far = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert far.status_code == 403 and "METRICS_TOKEN" in far.get_data(as_text=True)

    guarded = create_app({"FRACTURE_SETTINGS": dataclasses.replace(settings, metrics_token="s3cret"),
                          "TESTING": True}).test_client()
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = guarded.get("/metrics", headers={"Authorization": "Bearer s3cret"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 200 and b"fracture_jobs" in ok.data


def test_a_real_prometheus_scrapes_a_live_system_and_reads_a_jobs_images_back(
    live_system: LiveSystem, sample_images: list[Path], tmp_path: Path,
) -> None:
    """Debian's prometheus, from a generated configuration, scrapes gunicorn + redis + a real worker every 3 s;
    a job's images come back through Prometheus's HTTP API."""
    exe = shutil.which("prometheus")
    if exe is None:
        skip_or_fail("prometheus is not installed (apt-get install prometheus; scripts/system-deps.sh)")
    port = free_port()
    target = live_system.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 3s, scrape_timeout: 3s, evaluation_interval: 3s}\n"
        f"scrape_configs:\n  - job_name: fracture\n    static_configs: [{{targets: ['{target}']}}]\n")
    args = [exe, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    prom = start_proc("prometheus", args, os.environ, tmp_path / "logs")

    def query(expr: str) -> float | None:
        prom.expect_alive()
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5).json()
        except (requests.RequestException, ValueError):
            return None
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    try:
        wait_for(lambda: query('up{job="fracture"}') == 1, 60, f"Prometheus to scrape /metrics\n{prom.log_text()}")
        files = [("files", (f"m/{n}.png", p.read_bytes())) for n, p in enumerate(sample_images[:4])]
        posted = live_system.http.post(f"{live_system.url}/api/jobs", files=files, timeout=60)
        assert posted.status_code == 201, posted.text
        wait_for(lambda: query("fracture_images_classified_total") == 4, 120, "4 classified images in Prometheus")
        assert query('fracture_jobs{status="done"}') == 1
        assert query('fracture_active_model_info{name="v1"}') == 1
        assert query('fracture_queue_messages{queue="inference"}') == 0
        # The latency histograms (counted in the database by the worker): one chunk of the 4 images, one job.
        wait_for(lambda: query("sum(fracture_chunk_seconds_count)") == 1, 30, "the chunk in Prometheus")
        assert query("sum(fracture_image_seconds_count)") == 4
        assert query('fracture_job_seconds_count{status="done"}') == 1
        assert query('histogram_quantile(0.5, sum by (le) (fracture_chunk_seconds_bucket))') is not None
    finally:
        prom.stop()
