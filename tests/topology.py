"""The production topology on one machine, started from docker-compose.yml's own commands (one list, not two copies).

docker-compose.yml is the list of what production runs: `migrate`, `web`, `worker`, `trainer`, `beat`,
`dicom-node`, each with its command and the shared environment (`x-app`). `localise` turns each service's
command into the same command for this machine, with only the changes a container would make for it:

- the executable comes from this checkout's virtual environment (the image puts the same ones on PATH);
- gunicorn binds 127.0.0.1:<free port> instead of 0.0.0.0:5000 (a container has its own network);
- each Celery worker gets its own node name (`-n <service>-<i>@%h`; containers have their own hostnames);
- `/data` (the shared volume) becomes this topology's FRACTURE_HOME;
- `${VAR:-default}` is filled as docker-compose fills it, from the environment given.

tests/test_compose.py holds that this is all that differs; tests/test_prod_topology.py runs it with faults.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from harness import Proc, RedisServer, free_port, http_ok, start_proc, wait_for
from installation import REPO_ROOT, VENV_BIN, base_env

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# What production starts from the image (the order `up` starts them in); `migrate` runs once before.
APP_SERVICES = ("web", "worker", "trainer", "beat", "dicom-node")
VOLUME = "/data"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def compose_services(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml's services (YAML merge keys resolved, so `x-app` is in each app service)."""
    return dict(yaml.safe_load(path.read_text())["services"])


def fill(text: str, env: dict[str, str]) -> str:
    """`${VAR:-default}` and `${VAR}` as docker-compose fills them: VAR when set and not empty, else the default."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def compose_command(service: dict[str, Any], env: dict[str, str]) -> list[str]:
    """A service's command as a list, variables filled."""
    command = service["command"]
    args = command.split() if isinstance(command, str) else list(command)
    return [fill(str(a), env) for a in args]


def compose_environment(services: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """The environment every app service shares (`x-app`), variables filled."""
    return {k: fill(str(v), env) for k, v in services["web"]["environment"].items()}


_EXECUTABLES = {"fracture": VENV_BIN / "fracture", "gunicorn": VENV_BIN / "gunicorn", "celery": VENV_BIN / "celery",
                "python": Path(sys.executable)}


def localise(name: str, args: list[str], home: Path, web_port: int, index: int = 1) -> list[str]:
    """Service `name`'s container command as this machine runs it (the changes listed in the module docstring)."""
    out = [str(_EXECUTABLES.get(args[0], args[0])), *args[1:]]
    out = [home.as_posix() + a[len(VOLUME):] if a == VOLUME or a.startswith(VOLUME + "/") else a for a in out]
    if args[0] == "gunicorn":
        out[out.index("--bind") + 1] = f"127.0.0.1:{web_port}"
    if args[0] == "celery" and "worker" in args:
        out += ["-n", f"{name}-{index}@%h"]
    return out


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster (tests/pg.py's), restartable."""

    cluster: Any = None

    def start(self) -> str:
        from pg import Cluster, pg_bindir

        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.cluster = Cluster(bindir)
        self.cluster.start()
        return str(self.cluster.url("postgres"))

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is dropped, the data stays."""
        c = self.cluster
        done = c._run("pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", str(c.data), "-l", str(c.log))
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


@dataclass
class Topology:
    """PostgreSQL + redis-server (no persistence) + every app service of docker-compose.yml, as separate processes
    over one FRACTURE_HOME (the shared STORAGE_DIR)."""

    home: Path
    inference_workers: int = 2
    overrides: dict[str, str] = field(default_factory=dict)
    web_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    postgres: Postgres = field(default_factory=Postgres)
    redis: RedisServer | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)  # each service's container command, filled

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def start(self) -> None:
        """Start the servers, migrate with `migrate`'s command, then every app service; wait until all are up."""
        self.home.mkdir(parents=True, exist_ok=True)
        database_url = self.postgres.start()
        self.redis = RedisServer(self.home)
        self.redis.start()
        services = compose_services()
        host = base_env(self.home)
        shared = compose_environment(services, host)
        shared.update(DATABASE_URL=database_url, REDIS_URL=self.redis.url, FRACTURE_HOME=str(self.home),
                      STORAGE_DIR=str(self.home / "storage"), DICOM_PORT=str(self.dicom_port))
        self.env = {**host, **shared, **self.overrides}
        for name in ("migrate", *APP_SERVICES):
            self.commands[name] = compose_command(services[name], self.env)
        migrate = subprocess.run(self.local("migrate"), env=self.env, capture_output=True, text=True, timeout=180,
                                 cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        self.start_service("web")
        for i in range(1, self.inference_workers + 1):
            self.start_service("worker", i)
        self.start_service("trainer")
        self.start_service("beat")
        self.start_service("dicom-node")
        wait_for(lambda: http_ok(f"{self.url}/api/health"), 120, "the web to answer /api/health")
        for key, proc in self.procs.items():
            if proc.name.startswith(("worker", "trainer")):
                wait_for(lambda p=proc: p.expect_alive() or p.has_logged(" ready."), 180, f"{key} to be ready")

    def local(self, name: str, index: int = 1) -> list[str]:
        """Service `name`'s command as this machine runs it (its `index`-th copy, for the workers' node names)."""
        return localise(name, self.commands[name], self.home, self.web_port, index)

    def start_service(self, name: str, index: int = 1) -> Proc:
        """(Re)start one service process, as docker's restart policy would."""
        key = f"{name}-{index}" if name == "worker" else name
        args = self.local(name, index)
        log_name = key if key not in self.procs else f"{key}.{sum(1 for p in self.log_dir.glob(key + '*.log'))}"
        self.procs[key] = start_proc(log_name, args, self.env, self.log_dir)
        return self.procs[key]

    def restart_service(self, key: str, wait_ready: bool = True) -> float:
        """Start `key` again after it died; return the seconds until it is ready."""
        import time

        started = time.monotonic()
        name, _, index = key.partition("-") if key.startswith("worker-") else (key, "", "1")
        proc = self.start_service(name, int(index or 1))
        if wait_ready and name in ("worker", "trainer"):
            wait_for(lambda: proc.expect_alive() or proc.has_logged(" ready."), 180, f"{key} to be ready again")
        return time.monotonic() - started

    def sigkill(self, key: str) -> None:
        """SIGKILL a service's whole process group (a Celery parent and its pool children), as an OOM kill would."""
        proc = self.procs[key]
        proc.signal_group(signal.SIGKILL)
        proc.popen.wait(timeout=30)

    def restart_redis_empty(self) -> None:
        """Stop redis-server and start it again on the same port with nothing in it (persistence is off)."""
        assert self.redis is not None
        self.redis.stop()
        self.redis.start()

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(f"===== {log.name} =====\n{log.read_text(errors='replace')[-chars:]}"
                         for log in sorted(self.log_dir.glob("*.log")))

    def fracture(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `fracture` command against this topology, as an operator would."""
        return subprocess.run([str(VENV_BIN / "fracture"), *args], env=self.env, capture_output=True, text=True,
                              timeout=180, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop(timeout=15)
        if self.redis is not None:
            self.redis.stop()
        self.postgres.stop()
        if os.environ.get("FRACTURE_KEEP_TOPOLOGY") != "1":
            shutil.rmtree(self.home / "storage", ignore_errors=True)
