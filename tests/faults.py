"""Helpers of the fault tests: a redis-server that can be stopped and started again, HTTP calls, job checks."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import Proc, free_port, start_proc, wait_for


@dataclass
class RedisProc:
    """A private redis-server on a fixed port: stop() and start() again to simulate a broker outage."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        # No persistence, as `fracture up` runs it: a restart loses every queued message.
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--daemonize", "no"]
        self.proc = start_proc("redis", args, {"PATH": "/usr/bin:/bin"}, self.workdir)
        wait_for(self.ping, 20, "redis-server to answer PING")

    def ping(self) -> bool:
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    def flushall(self) -> None:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


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
