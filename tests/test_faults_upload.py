"""The web server is SIGKILLed while one upload is being received and another stored: after a restart no half
job is shown (let alone as complete), the reaper deletes the stored leftovers, and a full upload to the
restarted server completes. (A worker SIGKILLed mid-job: tests/test_queue_kill.py.)"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from faults import api_headers, assert_each_image_once, post_images
from harness import WorkerFactory, free_port, start_web, wait_for
from installation import job_state
from web_client import multipart

from fracture.config import get_settings
from worker.celery_app import make_celery
from worker.reaper import reap

pytestmark = pytest.mark.slow


def _jobs(url: str, env: dict[str, str]) -> list[dict[str, object]]:
    response = requests.get(f"{url}/api/jobs", headers=api_headers(env), timeout=10)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, object]] = response.json()["jobs"]
    return jobs


def _upload_dirs(env: dict[str, str]) -> set[str]:
    root = get_settings(env).storage_dir / "uploads"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def _send_half(port: int, env: dict[str, str], files: list[Path]) -> socket.socket:
    """Start a multipart POST of `files` and send only half of its body; return the open socket."""
    body, content_type = multipart([(f.read_bytes(), f"{i:04d}_{f.name}") for i, f in enumerate(files)])
    head = (f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in api_headers(env).items()) + "\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_web_killed_mid_upload_leaves_no_half_job(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, sample_images: list[Path],
    tmp_path: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "REAPER_STALE_S": "1"}
    settings = get_settings(env)
    logs = tmp_path / "logs"
    files = sample_images * 10  # ~600 files: storing them takes long enough to be caught at it

    webs = []
    try:
        port = free_port()
        web = start_web(env, port, logs)
        webs.append(web)
        # One upload still arriving (half its body sent), another fully received and being stored (its job
        # row is committed only after its last file is stored): one SIGKILL catches both.
        receiving = _send_half(port, env, files)
        with ThreadPoolExecutor(1) as pool:
            storing = pool.submit(post_images, f"http://127.0.0.1:{port}", env, files, 120)
            caught = wait_for(lambda: _upload_dirs(env), 60, "the web to start storing the upload", interval=0.005)
            web.kill()
            with pytest.raises(requests.ConnectionError):
                storing.result()
        receiving.close()
        assert len(caught) == 1  # type: ignore[arg-type]
        orphan = next(iter(caught))  # type: ignore[call-overload]

        port = free_port()
        web = start_web(env, port, logs)
        webs.append(web)
        url = f"http://127.0.0.1:{port}"
        jobs = _jobs(url, env)
        assert all(j["total"] == len(files) for j in jobs), jobs  # never a job with fewer images than were sent
        assert not [j for j in jobs if j["status"] == "done" and j["processed"] != j["total"]]
        if jobs:
            pytest.fail(f"the kill landed after the commit, not while storing: {jobs}")
        assert _upload_dirs(env) == {orphan}, "the upload still arriving left files in storage"
        stored = len(list((settings.storage_dir / "uploads" / orphan).iterdir()))
        print(f"killed with {stored}/{len(files)} files of the second upload stored")
        assert stored < len(files)

        report = reap(make_celery(settings), settings, now=datetime.now(UTC) + timedelta(seconds=5))
        assert report.removed_uploads == [orphan]
        assert _upload_dirs(env) == set()

        # The restarted server takes a complete upload, and it completes.
        celery_worker_proc.start(env)
        started = time.monotonic()
        response = post_images(url, env, sample_images)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        wait_for(lambda: job_state(env, job_id)["status"] == "done", 120, "the complete upload to finish")
        assert_each_image_once(job_state(env, job_id), len(sample_images))
        print(f"complete upload done in {time.monotonic() - started:.1f} s")
    finally:
        for web in webs:
            web.stop()
