"""Helpers of the fault tests: a redis-server that can be stopped and started again, HTTP calls, job checks."""

from __future__ import annotations

from pathlib import Path

import requests
from harness import RedisServer
from skipping import skip_if_unavailable


class RedisProc(RedisServer):
    """A private redis-server on a fixed port: stop() and start() again to simulate a broker outage."""

    def start(self, timeout: float = 20) -> None:
        """Start it as harness.RedisServer does; skip the test (fail it under CI) if redis-server is missing."""
        with skip_if_unavailable():
            super().start(timeout)


def api_headers(env: dict[str, str]) -> dict[str, str]:
    """Headers every API call of the fault tests sends (the caller's credentials, when the API needs them)."""
    token = env.get("FRACTURE_TEST_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def post_images(url: str, env: dict[str, str], files: list[Path], timeout: float = 60) -> requests.Response:
    """POST `files` as one job to a live web server."""
    parts = [("files", (f"{i:04d}_{f.name}", f.read_bytes())) for i, f in enumerate(files)]
    return requests.post(f"{url}/api/jobs", files=parts, headers=api_headers(env), timeout=timeout)


def get_job(url: str, env: dict[str, str], job_id: str) -> requests.Response:
    return requests.get(f"{url}/api/jobs/{job_id}", headers=api_headers(env), timeout=10)


def assert_each_image_once(state: dict[str, object], total: int) -> None:
    """The job is done and every one of its `total` images has exactly one result."""
    assert state["status"] == "done", state
    assert state["processed"] == total == state["total"]
    per_image = state["per_image"]
    assert isinstance(per_image, dict) and len(per_image) == total
    assert set(per_image.values()) == {1}, {i: n for i, n in per_image.items() if n != 1}
