"""The process harness of the tests and the benchmark: ports, polling, child processes, redis, workers, web servers.

Plain Python (no pytest), so that bench/ can use it too. A helper that gives up raises HarnessError, an
AssertionError (a test failure, not an error); a system tool that is not installed raises Unavailable, which the
conftest fixtures turn into a skip, or a failure under CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from installation import REPO_ROOT, VENV_BIN, bearer

from fracture.queue import INFERENCE_WORKER_QUEUES


class HarnessError(AssertionError):
    """A harness helper gave up: the test (or benchmark) cannot go on."""


class HarnessTimeout(HarnessError):
    """wait_for ran out of time."""


class ProcessExited(HarnessError):
    """A child process exited while the harness was waiting for it to become ready."""


class Unavailable(Exception):
    """A system tool the harness needs is not installed."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy; raise HarnessTimeout naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, chars: int = 6000) -> str:
    """The last `chars` characters of a log file, or "(no log)"."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


# ---------------------------------------------------------------- child processes


@dataclass
class Proc:
    """A child process started in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """The tail of the child's log."""
        return tail(self.log)

    def has_logged(self, text: str) -> bool:
        """Whether `text` is anywhere in the child's log (not only its tail: a busy worker writes past a line fast)."""
        try:
            return text in self.log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def expect_alive(self) -> None:
        """Raise ProcessExited, with the log, if the child has exited."""
        if not self.alive():
            raise ProcessExited(f"{self.name} exited with {self.popen.returncode}:\n{self.log_text()}")

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group, if any of it is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (the Celery parent and its pool children) and reap."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20, sig: int = signal.SIGTERM) -> int | None:
        """Ask politely (`sig` to the child), then SIGKILL the group if it does not exit in time."""
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=30)
        # Pool children that outlived their parent would keep consuming: clear the group.
        self.signal_group(signal.SIGKILL)
        return self.popen.returncode


def start_proc(name: str, args: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path = REPO_ROOT) -> Proc:
    """Start `args` in a new session with stdout and stderr appended to `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def http_ok(url: str) -> bool:
    """Whether `url` answers below 500 within two seconds."""
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


# ---------------------------------------------------------------- redis


@dataclass
class RedisServer:
    """A private redis-server on a fixed loopback port, no persistence: stop() and start() again for an outage."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        """Start the server (raise Unavailable when redis-server is not installed) and wait for PING."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise Unavailable("redis-server is not installed (apt-get install redis-server)")
        # No persistence, as `fracture up` runs it: a restart loses every queued message.
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--daemonize", "no"]
        self.proc = start_proc("redis", args, os.environ, self.workdir)
        wait_for(self._ready, timeout, "redis-server to answer PING")

    def _ready(self) -> bool:
        assert self.proc is not None
        self.proc.expect_alive()
        return self.ping()

    def ping(self) -> bool:
        """Whether the server answers PING."""
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    def flushall(self) -> None:
        """Empty every database."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def stop(self) -> None:
        """Stop the server (its data is lost)."""
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


# ---------------------------------------------------------------- workers and the web server


@dataclass
class WorkerFactory:
    """Start real Celery worker processes; stop_all() stops every one still running.

    A worker of the `training` queue runs the trainer's app (`trainer.app`), any other the inference worker's.
    """

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self, env: dict[str, str], queues: str = INFERENCE_WORKER_QUEUES, concurrency: int = 1, pool: str = "prefork",
        ready_timeout: float = 90,
    ) -> Proc:
        """Start a worker on `queues` and wait until it reports ready."""
        name = f"worker-{len(self.started) + 1}"
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        app = "trainer.app" if queues == "training" else "worker.app"
        args = [
            str(VENV_BIN / "celery"), "-A", app, "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", pool, "-n", hostname, "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]
        proc = start_proc(name, args, env, self.log_dir)
        self.started.append(proc)

        def ready() -> bool:
            proc.expect_alive()
            return proc.has_logged(" ready.")

        wait_for(ready, ready_timeout, f"{name} to report ready")
        return proc

    def stop_all(self) -> None:
        """Stop every worker started here."""
        for proc in self.started:
            proc.stop()


def start_web(env: dict[str, str], port: int, log_dir: Path, timeout: float = 60) -> Proc:
    """Serve `web.wsgi:app` with gunicorn on 127.0.0.1:`port` and wait until /api/health answers."""
    args = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
            "--timeout", "300", "--no-control-socket", "--logger-class", "web.gunicorn_logs.Logger", "web.wsgi:app"]
    proc = start_proc("web", args, env, log_dir)

    def up() -> bool:
        proc.expect_alive()
        return http_ok(f"http://127.0.0.1:{port}/api/health")

    wait_for(up, timeout, "the web server to answer /api/health")
    return proc


@dataclass
class LiveSystem:
    """A running web server + redis + inference worker over one FRACTURE_HOME.

    `token`/`headers` are the admin `tester`'s; `http` is a requests.Session that sends them.
    """

    url: str
    env: dict[str, str]
    home: Path
    web: Proc
    worker: Proc
    token: str = ""
    _http: requests.Session | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The admin's Authorization header."""
        return bearer(self.token)

    @property
    def http(self) -> requests.Session:
        """A requests.Session that sends the admin's Bearer token (closed by close())."""
        if self._http is None:
            self._http = requests.Session()
            self._http.headers.update(self.headers)
        return self._http

    def logs(self) -> str:
        """The tails of the web server's and the worker's logs."""
        return "\n".join(f"===== {p.name} =====\n{p.log_text()}" for p in (self.web, self.worker))

    def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._http is not None:
            self._http.close()


# ---------------------------------------------------------------- `fracture up`


def start_fracture_up(
    env: dict[str, str], port: int, log_dir: Path, *, broker: str = "auto", concurrency: int | None = None,
    cwd: Path = REPO_ROOT, name: str = "fracture-up", timeout: float = 180,
    healthy: Callable[[dict[str, Any]], bool] | None = None,
) -> Proc:
    """Run `fracture up` as a child; return once it reports its URL and /api/health answers 200 (and is `healthy`).

    If it exits or times out first, it is stopped and the HarnessError carries its log and its children's.
    """
    args = [str(VENV_BIN / "fracture"), "up", "--broker", broker, "--port", str(port)]
    if concurrency is not None:
        args += ["--inference-concurrency", str(concurrency)]
    # Unbuffered, so that the line "fracture is up on ..." reaches the log when it is printed.
    proc = start_proc(name, args, {**env, "PYTHONUNBUFFERED": "1"}, log_dir, cwd=cwd)
    url = f"http://127.0.0.1:{port}/api/health"

    def up() -> bool:
        proc.expect_alive()
        if "fracture is up on" not in proc.log_text():  # printed once the web server answers
            return False
        try:
            response = requests.get(url, timeout=2)
            return response.status_code == 200 and (healthy is None or healthy(response.json()))
        except (requests.RequestException, ValueError):
            return False

    try:
        wait_for(up, timeout, "`fracture up` to serve /api/health", interval=0.5)
    except HarnessError as e:
        proc.stop(timeout=60, sig=signal.SIGINT)
        own = "" if isinstance(e, ProcessExited) else f"\n===== {name} =====\n{proc.log_text()}"
        raise type(e)(f"{e}{own}{_supervised_logs(env)}") from None
    return proc


def _supervised_logs(env: dict[str, str], chars: int = 3000) -> str:
    """The tails of the logs `fracture up` keeps for its children under FRACTURE_HOME/logs."""
    home = env.get("FRACTURE_HOME")
    logs = sorted((Path(home) / "logs").glob("*.log")) if home else []
    return "".join(f"\n===== {log.name} =====\n{tail(log, chars)}" for log in logs)
