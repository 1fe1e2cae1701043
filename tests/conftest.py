"""Shared fixtures: real images, a tiny real checkpoint, a migrated database, redis, workers, a live system."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from fracture.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Variables of the developer's shell that would point a test at the wrong database or broker.
_SCRUBBED = ("FRACTURE_HOME", "DATABASE_URL", "BROKER_URL", "REDIS_URL", "STORAGE_DIR", "FRACTURE_SEED_MODEL")


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Proc:
    """A child process started in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return tail(self.log)

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (the Celery parent and its pool children) and reap."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 20) -> int | None:
        """Ask politely (SIGTERM), then SIGKILL the group if it does not exit in time."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=30)
        # Pool children that outlived their parent would keep consuming: clear the group.
        self.signal_group(signal.SIGKILL)
        return self.popen.returncode


def start_proc(name: str, args: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO_ROOT) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name, popen, log)


# ---------------------------------------------------------------- data and model


@pytest.fixture(scope="session")
def dataset_root() -> Path:
    """The shared real dataset (`<repo>/../shared/datasets/...`, or $FRACTURE_DATASET)."""
    candidates = [REPO_ROOT.parent / "shared" / "datasets" / "bone-fracture-multiregion"]
    if os.environ.get("FRACTURE_DATASET"):
        candidates.insert(0, Path(os.environ["FRACTURE_DATASET"]))
    for root in candidates:
        if (root / "materialize").is_file():
            return root
    message = f"real dataset not found (looked in {', '.join(map(str, candidates))}; set FRACTURE_DATASET)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run the tests on real images, never skip them quietly
    pytest.skip(message)


def materialize(dataset_root: Path, dest: Path, per_class: int, splits: str | None = None) -> Path:
    """Lay out a real sample of the dataset under `dest` with the dataset's own script."""
    cmd = [sys.executable, str(dataset_root / "materialize"), str(dest), "--per-class", str(per_class)]
    if splits:
        cmd += ["--splits", splits]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


def image_files(root: Path) -> list[Path]:
    """Every file under `root`, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def sample_dir(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sample: at most 10 files per split and class, laid out as the dataset ships (~60 files)."""
    return materialize(dataset_root, tmp_path_factory.mktemp("sample"), per_class=10)


@pytest.fixture(scope="session")
def sample_images(sample_dir: Path) -> list[Path]:
    """The files of `sample_dir`, sorted."""
    return image_files(sample_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real but untrained checkpoint (width 8, 64 px): plumbing only, never assert its predictions."""
    import torch

    from fracture.checkpoint import save_checkpoint
    from fracture.net import ModelArgs, build_model
    from fracture.preprocess import PreprocessSpec

    torch.manual_seed(0)
    args = ModelArgs(width=8)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, build_model(args), args, PreprocessSpec(image_size=64), ["fractured", "not fractured"], 0.5)
    return path


# ---------------------------------------------------------------- a migrated installation


def base_env(home: Path) -> dict[str, str]:
    """os.environ without stray fracture settings, pointed at `home`, sized for a small CPU box."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(
        FRACTURE_HOME=str(home),
        DATABASE_URL=f"sqlite:///{home / 'fracture.sqlite'}",
        FRACTURE_DEVICE="cpu",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


TEST_ADMIN = "tester"


def add_user(env: dict[str, str], name: str, admin: bool = False) -> dict[str, str]:
    """Create a user in the installation of `env`; return {"username", "password", "token"}."""
    from fracture.accounts import create_user
    from fracture.config import get_settings
    from fracture.db import session_scope

    with session_scope(get_settings(env).database_url) as session:
        creds = create_user(session, name, admin=admin)
    return {"username": creds.username, "password": creds.password, "token": creds.token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register_model(env: dict[str, str], checkpoint: Path) -> int:
    """Register `checkpoint` in the installation of `env` and make it the active version."""
    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.registry import promote, register_checkpoint
    from fracture.storage import Storage

    settings = get_settings(env)
    with session_scope(settings.database_url) as session:
        version = register_checkpoint(session, Storage(settings.storage_dir), checkpoint)
        promote(session, version)
        session.flush()
        return version.id


@pytest.fixture
def fracture_env(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, str]:
    """A full process environment for a fresh installation: migrated SQLite, tiny model active, an admin.

    The broker defaults to the embedded SQLite transport under FRACTURE_HOME; set REDIS_URL to change.
    The admin `tester`'s credentials are in FRACTURE_TEST_USER, FRACTURE_TEST_PASSWORD, FRACTURE_TEST_TOKEN.
    """
    from fracture.migrate import upgrade

    home = tmp_path / "home"
    home.mkdir()
    env = base_env(home)
    upgrade(env["DATABASE_URL"])
    env["FRACTURE_MODEL_VERSION_ID"] = str(register_model(env, tiny_checkpoint))
    admin = add_user(env, TEST_ADMIN, admin=True)
    env.update(FRACTURE_TEST_USER=admin["username"], FRACTURE_TEST_PASSWORD=admin["password"],
               FRACTURE_TEST_TOKEN=admin["token"])
    return env


@pytest.fixture
def settings(fracture_env: dict[str, str]) -> Settings:
    """The Settings of `fracture_env`'s installation."""
    from fracture.config import get_settings

    return get_settings(fracture_env)


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    """A Flask test client of that installation, signed in as the test admin (Bearer token)."""
    from web_client import make_client

    from fracture.db import dispose_engines

    yield make_client(settings)
    dispose_engines()


# ---------------------------------------------------------------- redis and workers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private `redis-server` on a free loopback port, no persistence; yields its URL (db 0)."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start_proc(
        "redis",
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no"],
        dict(os.environ), workdir,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

    def ready() -> bool:
        if not proc.alive():
            pytest.fail(f"redis-server exited:\n{proc.log_text()}")
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_for(ready, 20, "redis-server to answer PING")
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


@dataclass
class WorkerFactory:
    """Start real `celery -A worker.app worker` processes; every one still running is stopped at teardown."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self, env: dict[str, str], queues: str = "inference", concurrency: int = 1, pool: str = "prefork",
        ready_timeout: float = 90,
    ) -> Proc:
        name = f"worker-{len(self.started) + 1}"
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        args = [
            str(VENV_BIN / "celery"), "-A", "trainer.app" if queues == "training" else "worker.app", "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", pool, "-n", hostname, "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]
        proc = start_proc(name, args, env, self.log_dir)
        self.started.append(proc)

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"{name} exited with {proc.popen.returncode}:\n{proc.log_text()}")
            return " ready." in proc.log_text()

        wait_for(ready, ready_timeout, f"{name} to report ready")
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def celery_worker_proc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """A factory of real Celery worker processes: `.start(env, queues=..., concurrency=...) -> Proc`."""
    factory = WorkerFactory(tmp_path / "logs")
    yield factory
    factory.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in factory.started:
            print(f"\n===== {proc.name} log =====\n{proc.log_text()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item so fixtures can print logs when the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# ---------------------------------------------------------------- a live system


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
    _http: Any = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def http(self) -> Any:
        """A requests.Session that sends the admin's Bearer token (closed at teardown)."""
        import requests

        if self._http is None:
            self._http = requests.Session()
            self._http.headers.update(self.headers)
        return self._http

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log_text()}" for p in (self.web, self.worker))


def start_web(env: dict[str, str], port: int, log_dir: Path, timeout: float = 60) -> Proc:
    """Serve `web.wsgi:app` with gunicorn on 127.0.0.1:`port` and wait until /api/health answers."""
    import requests

    args = [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
            "--timeout", "300", "--no-control-socket", "web.wsgi:app"]
    proc = start_proc("web", args, env, log_dir)

    def up() -> bool:
        if not proc.alive():
            pytest.fail(f"web exited with {proc.popen.returncode}:\n{proc.log_text()}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    wait_for(up, timeout, "the web server to answer /api/health")
    return proc


@pytest.fixture
def live_system(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[LiveSystem]:
    """Web (gunicorn) + real redis + one real inference worker, sharing a fresh FRACTURE_HOME."""
    env = {**fracture_env, "REDIS_URL": redis_url}
    worker = celery_worker_proc.start(env)
    port = free_port()
    web = start_web(env, port, tmp_path / "logs")
    system = LiveSystem(f"http://127.0.0.1:{port}", env, Path(env["FRACTURE_HOME"]), web, worker,
                        token=env["FRACTURE_TEST_TOKEN"])
    yield system
    if system._http is not None:
        system._http.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n{system.logs()}")
    web.stop()


# ---------------------------------------------------------------- jobs made directly in the database


def create_job(env: dict[str, str], files: list[Path], refused: dict[str, str] | None = None) -> str:
    """Store `files` and commit a queued Job with one Image each (what the web's upload does); return its id.

    `refused` adds Images that were refused at ingest: display name -> reason.
    """
    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.models import Image, Job
    from fracture.registry import active_version
    from fracture.storage import Storage

    settings = get_settings(env)
    storage = Storage(settings.storage_dir)
    refused = refused or {}
    with session_scope(settings.database_url) as session:
        version = active_version(session)
        assert version is not None, "no active model in this installation"
        job = Job(total=len(files) + len(refused), model_version_id=version.id, name="test job")
        session.add(job)
        session.flush()
        seq = 0
        for seq, f in enumerate(files, start=1):
            key = f"uploads/{job.id}/{seq:06d}"
            with open(f, "rb") as src:
                size = storage.write_stream(key, src)
            session.add(Image(job_id=job.id, seq=seq, path=f.name, storage_key=key, size_bytes=size))
        for offset, (name, reason) in enumerate(refused.items(), start=seq + 1):
            session.add(Image(job_id=job.id, seq=offset, path=name, ingest_error=reason))
        return job.id


def job_state(env: dict[str, str], job_id: str) -> dict[str, object]:
    """The job row and its result rows, read fresh from the database."""
    from sqlalchemy import func, select

    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.models import Job, Result

    with session_scope(get_settings(env).database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        per_image = dict(
            session.execute(
                select(Result.image_id, func.count(Result.id)).where(Result.job_id == job_id).group_by(Result.image_id)
            ).all()
        )
        return {
            "status": job.status, "total": job.total, "processed": job.processed, "failed": job.failed,
            "error": job.error, "per_image": per_image,
        }
