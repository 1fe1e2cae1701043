"""The JSON API against a live system (gunicorn + redis + a real worker): a zip goes in, a full CSV comes out."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from pathlib import Path

import pytest
import requests
from harness import LiveSystem, wait_for

pytestmark = pytest.mark.slow


def test_zip_upload_reaches_done_with_one_csv_row_per_file(live_system: LiveSystem, sample_images: list[Path]) -> None:
    root = sample_images[0].parents[2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sample_images:
            zf.write(path, f"batch/{path.relative_to(root).as_posix()}")
        zf.writestr("batch/notes.txt", "not an X-ray")
        zf.writestr("batch/cut.jpg", b"\xff\xd8\xff\xe0" + bytes(300))  # a JPEG header, then nothing decodable
        zf.writestr("__MACOSX/batch/._x.jpg", b"junk")
    expected = len(sample_images) + 2

    started = time.monotonic()
    response = live_system.http.post(f"{live_system.url}/api/jobs", files=[("files", ("batch.zip", buf.getvalue()))],
                                     timeout=120)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert response.json()["total"] == expected

    def finished() -> dict[str, object] | None:
        job = live_system.http.get(f"{live_system.url}/api/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in ("done", "failed", "cancelled") else None

    job = wait_for(finished, 300, f"job {job_id} to finish\n{live_system.logs()}", interval=0.5)
    assert isinstance(job, dict)
    assert job["status"] == "done" and job["processed"] == expected and job["failed"] >= 2
    assert job["finished_at"] and job["elapsed_s"] is not None and job["eta_s"] == 0
    print(f"{expected} files classified in {time.monotonic() - started:.1f} s")

    text = live_system.http.get(f"{live_system.url}/api/jobs/{job_id}/results.csv", timeout=30).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == expected
    by_path = {r["path"]: r for r in rows}
    assert by_path["batch/notes.txt"]["error"] == "not an image: unrecognised file format"
    assert by_path["batch/cut.jpg"]["error"] and not by_path["batch/cut.jpg"]["prediction"]
    for row in rows:
        assert row["model_version"] == "v1"
        if not row["error"]:
            assert row["prediction"] in ("fractured", "not fractured")
            assert 0.0 <= float(row["probability"]) <= 1.0

    health = requests.get(f"{live_system.url}/api/health", timeout=30).json()
    assert health["database"] == "ok" and health["broker"] == "ok"
    assert health["workers"]["supported"] is True and len(health["workers"]["workers"]) == 1
