"""A hostile upload through a live system (gunicorn + redis + a real inference worker): the job finishes, every
refused member and broken image has its reason, the good images are classified, every process stays up."""

from __future__ import annotations

import requests
from bad_files import bomb_png, make_zip
from harness import LiveSystem, wait_for
from installation import LABELS

from fracture.models import FINAL_JOB_STATUSES, JobStatus


def test_hostile_upload_end_to_end(live_system: LiveSystem, jpeg: bytes, truncated_jpeg: bytes) -> None:
    """Web (gunicorn) + redis + a real worker: the job finishes, errors have reasons, every process stays up."""
    archive = make_zip([("../evil.jpg", jpeg), ("scans/ok.jpg", jpeg), ("scans/cut.jpg", truncated_jpeg),
                        ("scans/bomb.png", bomb_png(12000, 12000)), ("scans/inner.zip", make_zip([("x", jpeg)]))])
    files = [("files", ("hostile.zip", archive)), ("files", ("Röntgen 01.jpg", jpeg))]
    token = live_system.env.get("FRACTURE_TEST_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{live_system.url}/api/jobs", files=files, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    def finished() -> dict[str, object] | None:
        job = requests.get(f"{live_system.url}/api/jobs/{job_id}", headers=headers, timeout=10).json()
        return job if job["status"] in FINAL_JOB_STATUSES else None

    job = wait_for(finished, 120, "the hostile job to finish")
    assert job["status"] == JobStatus.DONE  # type: ignore[index]
    results = requests.get(f"{live_system.url}/api/jobs/{job_id}/results", headers=headers, timeout=10).json()
    by_path = {r["path"]: r for r in results["results"]}
    assert set(by_path) == {"evil.jpg", "scans/ok.jpg", "scans/cut.jpg", "scans/bomb.png", "scans/inner.zip",
                            "Röntgen 01.jpg"}
    assert "path leaves the archive" in by_path["evil.jpg"]["error"]
    assert "image file is truncated" in by_path["scans/cut.jpg"]["error"]
    assert by_path["scans/bomb.png"]["error"].startswith("image too large: 12000x12000")
    assert "nested archives" in by_path["scans/inner.zip"]["error"]
    for path in ("scans/ok.jpg", "Röntgen 01.jpg"):
        assert by_path[path]["prediction"] in LABELS and not by_path[path]["error"]
    assert live_system.web.alive() and live_system.worker.alive(), live_system.logs()
