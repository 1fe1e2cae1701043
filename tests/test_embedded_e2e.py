"""`fracture up` on the embedded SQLite broker: a zip of real images in over HTTP, a CSV out, Ctrl-C stops all."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests
from harness import free_port, start_fracture_up, wait_for
from installation import VENV_BIN, base_env, create_job, image_files, job_state, materialize, register_model

from fracture.migrate import upgrade

N_IMAGES = int(os.environ.get("FRACTURE_E2E_IMAGES", "20"))


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def real_zip(dataset_root: Path, tmp_path: Path) -> tuple[bytes, int]:
    per_class = max(1, N_IMAGES // 2)
    files = image_files(materialize(dataset_root, tmp_path / "imgs", per_class=per_class, splits="train"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f.relative_to(tmp_path / "imgs").as_posix())
    return buf.getvalue(), len(files)


@pytest.mark.slow
def test_fracture_up_embedded_serves_a_job_and_stops_cleanly(
    tmp_path: Path, tiny_checkpoint: Path, real_zip: tuple[bytes, int], request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "home"
    env = {**base_env(home), "FRACTURE_SEED_MODEL": str(tiny_checkpoint)}
    # A job left unfinished by an earlier run (its broker is gone): `fracture up` must queue it again.
    upgrade(env["DATABASE_URL"])
    register_model(env, tiny_checkpoint)
    leftover = create_job(env, image_files(tmp_path / "imgs")[:6])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    # Waits until it prints "fracture is up on ..." and /api/health answers; stops it and fails otherwise.
    up = start_fracture_up(env, port, tmp_path / "logs", broker="sqlite", cwd=tmp_path, timeout=120)
    try:
        assert f"http://127.0.0.1:{port}" in up.log_text()
        # The first start made an admin, printed it once and left a private copy for whoever missed it.
        first = dict(line.split(": ", 1) for line in (home / "first-admin.txt").read_text().splitlines()[2:])
        assert (home / "first-admin.txt").stat().st_mode & 0o777 == 0o600
        assert f"API token: {first['token']}" in up.log_text() and first["username"] == "admin"
        auth = {"Authorization": f"Bearer {first['token']}"}
        assert requests.get(f"{url}/api/jobs", timeout=30).status_code == 401
        health = requests.get(f"{url}/api/health", timeout=30).json()
        assert health["broker"] == "ok"
        print(f"fracture up answered after {time.monotonic() - began:.1f}s")

        data, n = real_zip
        posted = time.monotonic()
        r = requests.post(f"{url}/api/jobs", files=[("files", ("xrays.zip", data, "application/zip"))], timeout=60,
                          headers=auth)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["total"] == n and job["status"] in ("queued", "running", "done")

        final = wait_for(
            lambda: (s := requests.get(f"{url}/api/jobs/{job['id']}", timeout=10, headers=auth).json())["status"]
            in ("done", "failed", "cancelled") and s,
            180, "the job to finish",
        )
        print(f"{n} images done {time.monotonic() - posted:.1f}s after the POST (embedded broker)")
        assert final["status"] == "done", final
        assert final["processed"] == n

        body = requests.get(f"{url}/api/jobs/{job['id']}/results.csv", timeout=30, headers=auth)
        assert body.status_code == 200
        rows = list(csv.DictReader(io.StringIO(body.text)))
        assert len(rows) == n
        assert {"path", "prediction", "probability", "model_version", "error"} <= set(rows[0])
        assert sorted(r["path"] for r in rows) == sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
        for row in rows:
            if not row["error"]:
                assert row["prediction"] in ("fractured", "not fractured")
                assert 0.0 <= float(row["probability"]) <= 1.0
                assert row["model_version"]

        assert job_state(env, leftover)["status"] == "done", "the unfinished job was not resumed"

        kids = descendants(up.pid)
        assert len(kids) >= 4, "web, inference worker, training worker and beat should be running"
        stopping = time.monotonic()
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(timeout=60) == 0, up.log_text()
        print(f"stopped in {time.monotonic() - stopping:.1f}s")
        left = sorted(pid for pid in kids if running(pid))
        assert not left, f"processes left running after Ctrl-C: {left}"
        assert (home / "fracture.sqlite").is_file() and (home / "broker.sqlite").is_file()
    finally:
        if up.alive():
            up.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(up.log_text())
            for log in sorted((home / "logs").glob("*.log")):
                print(f"===== {log.name} =====\n{log.read_text(errors='replace')[-4000:]}")


def test_a_dying_child_stops_fracture_up_with_an_error(tmp_path: Path) -> None:
    """If a part of the system dies (here the web server cannot bind its port), the rest is stopped too."""
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(VENV_BIN / "fracture"), "up", "--broker", "sqlite", "--port", str(port)],
                              env=base_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
                              timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "web exited unexpectedly" in done.stdout or "web server did not start" in done.stdout, done.stdout
