"""`fracture up`: run web, inference worker, training worker, beat (a private redis, the DICOM node when DICOM_PORT
is set) as child processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fracture.config import Settings, get_settings

STOP_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor itself dies, so nothing is left running (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1", avoid: frozenset[int] = frozenset()) -> int:
    """A port nothing listens on now, other than those in `avoid` (ports this process is about to use itself)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def http_ok(url: str) -> bool:
    """Whether `url` answers with a status below 500 (the web server has loaded the app)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):
        return False


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Supervisor:
    """Start children in their own process groups; stop them all, in reverse order, on request or failure."""

    def __init__(self, log_dir: Path, echo: Callable[[str], None] = print) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.children: list[Child] = []
        self.stopping = False

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every child at once (the broker last, so workers can hand back unacked tasks), then SIGKILL."""
        self.stopping = True
        broker = [c for c in self.children if c.name == "redis"]
        self._stop([c for c in self.children if c.name != "redis"], timeout)
        self._stop(broker, timeout)

    def _stop(self, children: list[Child], timeout: float) -> None:
        began = time.monotonic()
        for child in children:
            if child.alive():
                child.popen.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.popen.wait(timeout=max(0.1, timeout - (time.monotonic() - began)))
            except subprocess.TimeoutExpired:
                self.echo(f"{child.name} did not stop in {timeout:.0f}s; killing it")
            # Pool children that outlive their parent would keep consuming tasks.
            child.signal_group(signal.SIGKILL)
            child.popen.wait(timeout=10)
            if os.environ.get("FRACTURE_DEBUG_STOP"):
                self.echo(f"{child.name} stopped after {time.monotonic() - began:.1f}s")

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)


# The consumers' entry modules: the inference worker (which also runs beat's tasks) and the trainer.
WORKER_APP = "worker.app"
TRAINER_APP = "trainer.app"
WEB_APP = "web.wsgi:app"
# gunicorn's own lines (the master's) in LOG_FORMAT too, not only the app's.
WEB_LOGGER = "web.gunicorn_logs.Logger"
# The DICOM node (C-STORE SCP and the loop that makes received studies jobs), started when DICOM_PORT is set.
DICOM_NODE_ARGS = [sys.executable, "-m", "worker.dicom_node"]


def _celery(app: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, *args]


def _worker_args(app: str, name: str, queues: str, concurrency: int) -> list[str]:
    # Mingle and gossip need broadcast, which the embedded broker lacks; neither is needed on one machine.
    return _celery(app, "worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO",
                   "--without-mingle", "--without-gossip")


def choose_broker(mode: str, env: dict[str, str], home: Path) -> tuple[str, bool]:
    """Return (kind, start_private_redis) for `mode` auto|redis|sqlite."""
    external = env.get("BROKER_URL") or env.get("REDIS_URL")
    has_redis = shutil.which("redis-server") is not None
    if mode == "sqlite":
        return "sqlite", False
    if mode == "redis":
        if external:
            return "external", False
        if not has_redis:
            raise SystemExit("--broker redis: set REDIS_URL or install redis-server")
        return "redis", True
    if external:
        return "external", False
    return ("redis", True) if has_redis else ("sqlite", False)


def _clear_embedded_broker(home: Path) -> None:
    """The database is the source of truth: a stale broker file would only replay duplicates."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        (home / f"broker.sqlite{suffix}").unlink(missing_ok=True)


def up(host: str, port: int, broker: str, inference_concurrency: int, echo: Callable[[str], None] = print) -> int:
    """Run the whole system until Ctrl-C/SIGTERM (exit 0) or until a child dies (exit 1)."""
    from fracture.db import session_scope
    from fracture.migrate import upgrade
    from fracture.queue import INFERENCE_WORKER_QUEUES, TRAINING_QUEUE, make_app, resume_unfinished
    from fracture.registry import ensure_seed_model

    env = dict(os.environ)
    settings = get_settings(env)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    env["FRACTURE_HOME"] = str(home)
    sup = Supervisor(home / "logs", echo)

    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        kind, private_redis = choose_broker(broker, env, home)
        if private_redis:
            redis_port = free_port(avoid=frozenset({port}))  # free now, the web's port may be too: not that one
            redis_dir = home / "redis"
            redis_dir.mkdir(exist_ok=True)
            sup.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(redis_dir)], env)
            if not _wait(lambda: port_open("127.0.0.1", redis_port), 20, sup):
                return _failed(sup, echo, "redis-server did not start")
            env.pop("BROKER_URL", None)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        elif kind == "sqlite":
            env.pop("BROKER_URL", None)
            env.pop("REDIS_URL", None)
            _clear_embedded_broker(home)
        settings = get_settings(env)
        echo(f"data folder: {home}")
        echo(f"broker: {_redact(settings.broker_url)}")

        upgrade(settings.database_url)
        with session_scope(settings.database_url) as session:
            model = ensure_seed_model(session, settings)
            model_name = model.name if model is not None else None
        echo(f"model: {model_name or 'none active (jobs are refused until one is trained or promoted)'}")
        announce_first_admin(settings, echo)

        register_dataset_dir(settings, echo)
        resumed = resume_unfinished(make_app(settings), settings)
        if resumed["jobs"] or resumed["training_runs"]:
            echo(f"resumed {len(resumed['jobs'])} unfinished job(s), {len(resumed['training_runs'])} training run(s)")

        web_args = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", "1",
                    "--threads", "8", "--timeout", "600", "--graceful-timeout", "10", "--no-control-socket",
                    "--logger-class", WEB_LOGGER, WEB_APP]
        sup.start("web", web_args, env)
        threads = str(max(1, (os.cpu_count() or 1) // max(1, inference_concurrency)))
        sup.start("inference-worker",
                  _worker_args(WORKER_APP, "inference", INFERENCE_WORKER_QUEUES, inference_concurrency),
                  {"TORCH_THREADS": threads, **env})
        sup.start("training-worker", _worker_args(TRAINER_APP, "training", TRAINING_QUEUE, 1), env)
        sup.start("beat", _celery(WORKER_APP, "beat", "--schedule", str(home / "celerybeat-schedule"), "--loglevel",
                                  "INFO"), env)
        if settings.dicom_port:
            sup.start("dicom-node", DICOM_NODE_ARGS, env)
            echo(f"DICOM node {settings.dicom_ae_title} on port {settings.dicom_port}, accepting "
                 f"{', '.join(p.ae_title for p in settings.dicom_peers) or 'no one (set DICOM_PEERS)'}")

        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        # The port opens before gunicorn's worker has imported the app: wait for a real answer.
        if not _wait(lambda: http_ok(f"http://{local}:{port}/api/health"), 120, sup, stop_requested):
            if stop_requested:
                return 0
            return _failed(sup, echo, "the web server did not start")
        echo(f"fracture is up on http://{host}:{port}  (logs in {sup.log_dir}; Ctrl-C stops everything)")

        while not stop_requested:
            dead = sup.first_dead()
            if dead is not None:
                return _failed(sup, echo, f"{dead.name} exited unexpectedly with code {dead.popen.returncode}")
            time.sleep(0.5)
        echo("stopping...")
        return 0
    finally:
        sup.stop_all()
        for s, handler in old.items():
            signal.signal(s, handler)


def register_dataset_dir(settings: Settings, echo: Callable[[str], None] = print) -> int | None:
    """Register FRACTURE_DATASET once (the operator's own setting, so it may lie outside DATASET_ROOTS).

    Its validation is sent to the training worker; return the new dataset's id, or None when nothing was added.
    """
    from sqlalchemy import select

    from fracture import datasets
    from fracture.db import session_scope
    from fracture.models import Dataset
    from fracture.queue import VALIDATE_DATASET_TASK, BrokerUnavailable, make_app, send_or_mark, send_trainer_task

    folder = settings.dataset_dir
    if folder is None:
        return None
    if not folder.is_dir():
        echo(f"FRACTURE_DATASET {folder} is not a folder; no dataset registered")
        return None
    with session_scope(settings.database_url) as session:
        if datasets.dataset_with_root(session, folder) is not None:
            return None
        name = re.sub(r"[^\w .()+-]", "_", folder.resolve().name)[:100] or "dataset"
        try:
            taken = session.scalars(select(Dataset.id).where(Dataset.name == name)).first() is not None
            name = f"{name} (FRACTURE_DATASET)" if taken else name
            dataset_id = datasets.register_folder(session, settings, folder, name, trusted=True).id
        except datasets.DatasetError as e:
            echo(f"FRACTURE_DATASET {folder} was not registered: {e}")
            return None
    def mark_unsent() -> None:
        with session_scope(settings.database_url) as session:
            datasets.mark_invalid(session, dataset_id, datasets.BROKER_DOWN)

    with contextlib.suppress(BrokerUnavailable):  # recorded on the dataset: an admin validates it again later
        send_or_mark(lambda: send_trainer_task(make_app(settings), VALIDATE_DATASET_TASK, dataset_id), mark_unsent)
    echo(f"dataset #{dataset_id} registered from FRACTURE_DATASET ({folder}); the training worker validates it")
    return dataset_id


def announce_first_admin(settings: Settings, echo: Callable[[str], None] = print) -> bool:
    """Create the first admin if the installation has no user; print its credentials this once."""
    from fracture.accounts import FIRST_ADMIN_FILE, ensure_first_admin
    from fracture.db import session_scope

    with session_scope(settings.database_url) as session:
        creds = ensure_first_admin(session, settings)
    if creds is None:
        return False
    rule = "-" * 72
    echo(f"{rule}\nFirst start: created the administrator account (shown only this once).\n"
         f"  username: {creds.username}\n  password: {creds.password}\n  API token: {creds.token}\n"
         f"A copy is in {settings.home / FIRST_ADMIN_FILE} (readable by you only): note them, change the "
         f"password (`fracture users set-password {creds.username}`), then delete that file.\n{rule}")
    return True


def _wait(ready: Callable[[], bool], timeout: float, sup: Supervisor, stop: list[int] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if sup.first_dead() is not None or stop:
            return False
        time.sleep(0.2)
    return False


def _failed(sup: Supervisor, echo: Callable[[str], None], message: str) -> int:
    echo(f"error: {message}")
    for child in sup.children:
        if not child.alive():
            echo(f"----- last lines of {child.log} -----\n{child.tail()}")
    return 1


def _redact(url: str) -> str:
    """Hide a password in a broker URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
