"""`fracture backup` and `fracture restore`: an installation's database and storage in one tar file with a manifest.

The archive holds `database/fracture.sqlite` (SQLite's online backup API: a consistent copy while the system runs)
or `database/fracture.pgdump` (pg_dump's custom format), `storage/...` (uploads, model artifacts, plots, logs,
thumbnails, heatmaps, unpacked dataset uploads), `home/secret-key` when the web keeps its key under FRACTURE_HOME,
and last `manifest.json`: format version, created-at, alembic revision, database kind, file counts and a sha256 of
every member. The database is dumped before storage is copied: storage files are written before the rows that
name them are committed, so every file a dumped row names is in the archive.

A restore checks the manifest and every member's sha256 before it changes anything, refuses an installation that
already holds data (unless forced) or a database of the other kind, restores the database and storage, then
migrates up to head, so a backup of an older version comes back upgraded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, inspect, select, table
from sqlalchemy.engine import make_url

from fracture.config import Settings

FORMAT = 1
MANIFEST = "manifest.json"
DUMP_NAMES = {"sqlite": "database/fracture.sqlite", "postgresql": "database/fracture.pgdump"}
STAGING_PREFIX = ".restore-"  # a restore's staging folder inside storage
# A write in progress (fracture.storage writes `.NAME.<uuid hex>.part`, then renames it).
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{32}\.part$")
KIND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
Echo = Callable[[str], None]


class BackupError(RuntimeError):
    """A backup or restore cannot go on; the message says why and what to do."""


def database_kind(url: str) -> str:
    """"sqlite" or "postgresql" for a DATABASE_URL; BackupError for any other."""
    kind = make_url(url).get_backend_name()
    if kind not in DUMP_NAMES:
        raise BackupError(f"backups cover SQLite and PostgreSQL databases, not {kind!r}")
    return kind


def _secret_file() -> str:
    from web.auth.secret import SECRET_FILE

    return SECRET_FILE


# ---------------------------------------------------------------- the database's tools


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url} is not a SQLite file")
    return Path(database)


def _pg_tool(name: str) -> str:
    """pg_dump or pg_restore: on PATH (Debian's wrapper picks the newest), else the newest under /usr/lib."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                                                   key=lambda p: int(p.parts[-3]), reverse=True)), None)
    if found is None:
        raise BackupError(f"{name} is not installed (apt-get install postgresql-client)")
    return str(found)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A DATABASE_URL as a libpq URI for pg_dump and pg_restore, its password in PGPASSWORD (never on argv)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _run_pg(args: list[str], url: str) -> None:
    conninfo, env = _libpq(url)
    done = subprocess.run([*args, f"--dbname={conninfo}"], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BackupError(f"{Path(args[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}")


def _dump(url: str, kind: str, dest: Path) -> None:
    """A consistent copy of the live database in `dest`."""
    if kind == "sqlite":
        path = _sqlite_path(url)
        if not path.is_file():
            raise BackupError(f"there is no database at {path}")
        source, copy = sqlite3.connect(path, timeout=30), sqlite3.connect(dest)
        try:
            source.backup(copy)  # page by page, under SQLite's locks: a snapshot even while the system writes
        finally:
            source.close()
            copy.close()
    else:
        _run_pg([_pg_tool("pg_dump"), "--format=custom", f"--file={dest}"], url)


# ---------------------------------------------------------------- backup


class _Hashing:
    """A file read through sha256 (tarfile.addfile reads it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        return data


def _add(tar: tarfile.TarFile, source: Path, name: str, digests: dict[str, str]) -> int:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = source.stat().st_size, int(source.stat().st_mtime), 0o600
    with open(source, "rb") as f:
        reader = _Hashing(f)
        tar.addfile(info, reader)
    digests[name] = reader.sha.hexdigest()
    return info.size


def storage_files(root: Path) -> list[Path]:
    """The files of the storage folder, sorted; writes in progress and a restore's staging left out."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and not _PARTIAL.match(p.name)
                  and not p.relative_to(root).parts[0].startswith(STAGING_PREFIX))


def _safe_member(name: str) -> bool:
    """Whether `name` is one backup writes: nothing absolute, no `..`, nothing that could leave its folder."""
    if name in DUMP_NAMES.values() or name == f"home/{_secret_file()}":
        return True
    parts = name.split("/")
    return (len(parts) > 1 and parts[0] == "storage" and "\\" not in name and "\0" not in name
            and all(part not in ("", ".", "..") for part in parts) and not parts[1].startswith(STAGING_PREFIX))


def backup(settings: Settings, out: Path, echo: Echo) -> dict[str, Any]:
    """Write the installation of `settings` to the tar `out` (gzip-compressed if it ends .gz or .tgz)."""
    from fracture import migrate

    kind = database_kind(settings.database_url)
    revision = migrate.current(settings.database_url)
    if revision is None:
        raise BackupError("the database has no schema yet: there is nothing to back up")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    gzip = out.name.endswith((".gz", ".tgz"))
    digests: dict[str, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".fracture-backup-", dir=out.parent) as tmp:
        dump, partial = Path(tmp) / "dump", Path(tmp) / "archive.part"
        _dump(settings.database_url, kind, dump)
        echo(f"database ({KIND_NAMES[kind]}, revision {revision}) dumped")
        with tarfile.open(partial, "w:gz") if gzip else tarfile.open(partial, "w") as tar:
            dump_bytes = _add(tar, dump, DUMP_NAMES[kind], digests)
            files = storage_files(settings.storage_dir)
            stored = sum(_add(tar, f, f"storage/{f.relative_to(settings.storage_dir).as_posix()}", digests)
                         for f in files)
            home = [name for name in (_secret_file(),) if (settings.home / name).is_file()]
            for name in home:
                _add(tar, settings.home / name, f"home/{name}", digests)
            manifest = {
                "format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "fracture_version": _version(), "alembic_revision": revision,
                "database": {"kind": kind, "member": DUMP_NAMES[kind], "bytes": dump_bytes},
                "storage": {"dir": str(settings.storage_dir), "files": len(files), "bytes": stored},
                "home": {"dir": str(settings.home), "files": home},
                "sha256": digests,
            }
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, _bytes_reader(data))
        partial.chmod(0o600)  # password hashes, tokens' hashes, the web's key
        os.replace(partial, out)
    echo(f"{len(files)} storage file(s), {stored} bytes -> {out} ({time.monotonic() - started:.1f} s)")
    return manifest


def _bytes_reader(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fracture")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- restore


def read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    """The archive's manifest, checked for a format this version reads; BackupError otherwise."""
    try:
        member = tar.getmember(MANIFEST)
        f = tar.extractfile(member)
        assert f is not None
        manifest = json.loads(f.read())
    except (KeyError, AssertionError, ValueError):
        raise BackupError("this is not a fracture backup: it has no readable manifest.json") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BackupError(f"this backup's format is {got!r}; this version of fracture reads format {FORMAT}")
    return manifest


def _check_revision(url: str, revision: str) -> None:
    from alembic.script import ScriptDirectory

    from fracture import migrate

    try:
        ScriptDirectory.from_config(migrate.alembic_config(url)).get_revision(revision)
    except Exception:  # alembic raises a few kinds for an unknown revision
        raise BackupError(f"the backup's database is at revision {revision!r}, which this version of fracture does "
                          "not know: restore it with the version that made it, or a newer one") from None


def holdings(settings: Settings) -> list[str]:
    """What the installation already holds: tables with rows (alembic_version aside), files in storage."""
    from fracture.db import make_engine

    held = []
    url = settings.database_url
    if database_kind(url) != "sqlite" or _sqlite_path(url).is_file():
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                names = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
                full = [t for t in names if conn.scalar(select(func.count()).select_from(table(t)))]
        finally:
            engine.dispose()
        if full:
            held.append(f"the database has rows in {', '.join(sorted(full))}")
    if storage_files(settings.storage_dir):
        held.append(f"storage ({settings.storage_dir}) holds files")
    return held


def _extract_verified(tar: tarfile.TarFile, manifest: dict[str, Any], staging: Path) -> None:
    """Every member the manifest names into `staging`, each checked against its sha256; BackupError on any doubt."""
    expected: dict[str, str] = manifest.get("sha256") or {}
    bad = [name for name in expected if not _safe_member(name)]
    if bad or manifest["database"].get("member") not in expected:
        raise BackupError(f"the manifest names members a backup never holds: {bad[:3] or 'no database'}")
    seen = set()
    for member in tar:
        if member.name == MANIFEST:
            continue
        if member.name not in expected or not member.isfile():
            raise BackupError(f"the archive holds {member.name!r}, which its manifest does not list")
        dest = staging / member.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        sha = hashlib.sha256()
        with open(dest, "wb") as out:
            while block := source.read(1 << 20):
                sha.update(block)
                out.write(block)
        if sha.hexdigest() != expected[member.name]:
            raise BackupError(f"{member.name} is damaged: its sha256 does not match the manifest's")
        seen.add(member.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"the archive lacks {len(missing)} member(s) its manifest lists, such as {missing[0]}")
    files = sum(1 for name in seen if name.startswith("storage/"))
    if files != manifest["storage"]["files"]:
        raise BackupError(f"the archive holds {files} storage files; its manifest says {manifest['storage']['files']}")


def _empty_postgresql(url: str) -> None:
    """Drop every table (and enum type) of the database, for --force: what pg_restore then recreates."""
    from sqlalchemy import MetaData, text

    from fracture.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            metadata = MetaData()
            metadata.reflect(conn)
            metadata.drop_all(conn)
            for enum in inspect(conn).get_enums():  # type: ignore[attr-defined]  # PostgreSQL's inspector
                conn.execute(text(f'DROP TYPE IF EXISTS "{enum["name"]}" CASCADE'))
    finally:
        engine.dispose()


def _restore_database(url: str, kind: str, dump: Path) -> None:
    if kind == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.restore")
        shutil.copyfile(dump, partial)
        for leftover in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            leftover.unlink(missing_ok=True)
        os.replace(partial, target)
        return
    _empty_postgresql(url)
    _run_pg([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
             str(dump)], url)


def _place_storage(staged: Path, root: Path) -> None:
    """Replace the storage folder's contents by `staged`'s (moved, not copied: staging lies inside `root`)."""
    for old in root.iterdir():
        if old.name.startswith(STAGING_PREFIX):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    if staged.is_dir():
        for new in staged.iterdir():
            os.replace(new, root / new.name)


def restore(settings: Settings, archive: Path, force: bool, echo: Echo) -> dict[str, Any]:
    """Restore the backup `archive` into the installation of `settings`, then migrate it up to head."""
    from fracture import datasets, migrate
    from fracture.db import session_scope
    from fracture.models import Dataset

    kind = database_kind(settings.database_url)
    started = time.monotonic()
    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest = _restore_from(tar, settings, kind, force, echo)
    except (tarfile.TarError, EOFError) as e:
        reason = str(e).splitlines()[0].rstrip(":")
        raise BackupError(f"cannot read {archive}: it is not a tar archive, or a damaged one ({reason})") from None
    migrate.upgrade(settings.database_url)
    echo(f"database migrated to revision {migrate.current(settings.database_url)}")
    root = settings.storage_dir
    old_root = Path(manifest["storage"]["dir"])
    with session_scope(settings.database_url) as session:
        moved = datasets.move_roots(session, old_root, root) if old_root != root else []
        unreachable = [(d.id, d.name, d.root) for d in session.scalars(select(Dataset).order_by(Dataset.id))
                       if not Path(d.root).is_dir()]
    if moved:
        echo(f"{len(moved)} dataset(s) unpacked in storage now read from {root}")
    for dataset_id, name, folder in unreachable:
        echo(f"warning: dataset #{dataset_id} {name!r} reads {folder}, which is not on this machine "
             "(dataset folders under DATASET_ROOTS are not in backups: copy them back)")
    echo(f"restored {archive} in {time.monotonic() - started:.1f} s")
    return manifest


def _restore_from(tar: tarfile.TarFile, settings: Settings, kind: str, force: bool, echo: Echo) -> dict[str, Any]:
    """Check the archive against the installation, then restore its database, storage and home files."""
    root = settings.storage_dir
    manifest = read_manifest(tar)
    theirs = manifest["database"]["kind"]
    if theirs != kind:
        theirs, ours = KIND_NAMES.get(theirs, theirs), KIND_NAMES[kind]
        raise BackupError(f"this backup holds a {theirs} database and this installation's DATABASE_URL is "
                          f"{ours}: restore it into a {theirs} installation (moving between the two is not supported)")
    _check_revision(settings.database_url, manifest["alembic_revision"])
    held = holdings(settings)
    if held and not force:
        raise BackupError("this installation is not empty: " + "; ".join(held)
                          + ". Restore into a fresh installation, or give --force to replace what it holds")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))  # inside storage: moves are renames
    try:
        _extract_verified(tar, manifest, staging)
        echo(f"archive checked: {manifest['storage']['files']} storage file(s), database at revision "
             f"{manifest['alembic_revision']}, made {manifest['created_at']}")
        _restore_database(settings.database_url, kind, staging / manifest["database"]["member"])
        _place_storage(staging / "storage", root)
        for name in manifest["home"]["files"]:
            settings.home.mkdir(parents=True, exist_ok=True)
            target = settings.home / name
            shutil.copyfile(staging / "home" / name, target)
            target.chmod(0o600)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
