"""A throwaway PostgreSQL cluster made by the tests (initdb + pg_ctl), and a fresh database per test.

Use from a test module with `from pg import pg_server, pg_url  # noqa: F401` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import free_port


def need(ok: object, reason: str) -> None:
    """Skip when a system tool is missing on a developer machine; fail under CI, where it must be there."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install it: scripts/system-deps.sh)")
        pytest.skip(reason)


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian keeps them off PATH in /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """One initdb'd cluster in a private temp folder, run as `postgres` when we are root (initdb refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, so the postgres user could not reach it.
        self.root = Path(tempfile.mkdtemp(prefix="fracture-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        init = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                         "--no-locale", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        # Durability is pointless for a throwaway cluster; turning it off makes migrations several times faster.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        start = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", opts)
        if start.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Cluster]:
    """A PostgreSQL server for the whole session on a free loopback port; stopped and deleted at the end."""
    bindir = pg_bindir()
    need(bindir, "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    assert bindir is not None
    need(os.geteuid() != 0 or shutil.which("runuser"), "running as root needs runuser to drop to postgres")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _admin(cluster: Cluster, sql: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def pg_url(pg_server: Cluster) -> Iterator[str]:
    """A URL to an empty database of its own on the session's server, dropped after the test."""
    from fracture.db import get_engine

    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(pg_server, f'CREATE DATABASE "{name}"')
    yield pg_server.url(name)
    # Close (not just forget) the pooled connections a test made through fracture.db's engine cache.
    get_engine(pg_server.url(name)).dispose()
    # FORCE: a pooled connection a test left open must not keep the database alive.
    _admin(pg_server, f'DROP DATABASE "{name}" WITH (FORCE)')
