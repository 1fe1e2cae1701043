"""`fracture backup` and `fracture restore` as real commands: an installation with a classified job, an uploaded
dataset and the web's key comes back in a fresh FRACTURE_HOME (SQLite) or a fresh database (PostgreSQL) with the
same results CSV and a loadable active model; refusals (not empty, damaged, other database kind) change nothing;
a backup of an older schema comes back migrated to head."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from installation import TEST_ADMIN, VENV_BIN, add_user, base_env, create_job, job_state, register_model, zipped_sample
from pg import Cluster, pg_server, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import select
from web_client import make_client

from fracture import datasets, migrate
from fracture.config import get_settings
from fracture.dataset_files import unpack_dataset_zip
from fracture.db import get_engine, session_scope
from fracture.models import Dataset, Image
from fracture.registry import active_version, load_predictor
from fracture.storage import Storage

FRACTURE = str(VENV_BIN / "fracture")


def close_engine(env: dict[str, str]) -> None:
    """Close this process's pooled connections to the installation's database (a restore replaces it)."""
    get_engine(env["DATABASE_URL"]).dispose()


def fracture(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    close_engine(env)
    return subprocess.run([FRACTURE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def results_csv(env: dict[str, str], job_id: str) -> bytes:
    """The job's results as the web's CSV endpoint serves them."""
    with make_client(get_settings(env)).get(f"/api/jobs/{job_id}/results.csv") as response:  # streamed: close it
        assert response.status_code == 200, response.get_data(as_text=True)
        data = response.get_data()
    close_engine(env)
    return data


def populate(env: dict[str, str], images: list[Path], dataset_zip: Path) -> tuple[str, bytes]:
    """A job classified by the worker's own chunk function, a dataset zip unpacked into storage, the web's key
    (created under FRACTURE_HOME as the web creates it); return the job's id and its results CSV."""
    from web.auth.secret import secret_key
    from worker.classify import classify_chunk

    settings = get_settings(env)
    job_id = create_job(env, images)
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.seq)))
    classify_chunk(settings, job_id, ids)
    state = job_state(env, job_id)
    assert (state["status"], state["processed"]) == ("done", len(images)), state
    with open(dataset_zip, "rb") as f:
        folder, _layout, _files = unpack_dataset_zip(Storage(settings.storage_dir), settings, f)
    with session_scope(settings.database_url) as session:
        datasets.create_dataset(session, "site upload", "training", datasets.DatasetSource.UPLOAD, folder)
    secret_key(settings)
    return job_id, results_csv(env, job_id)


def check_restored(env: dict[str, str], job_id: str, csv: bytes, source: dict[str, str]) -> None:
    """The restored installation serves the same CSV, loads its active model (SHA-256 checked), reads the uploaded
    dataset from its own storage and keeps the web's key."""
    settings = get_settings(env)
    assert results_csv(env, job_id) == csv
    with session_scope(settings.database_url) as session:
        version = active_version(session)
        assert version is not None and str(version.id) == source["FRACTURE_MODEL_VERSION_ID"]
        load_predictor(settings, version)
        (upload,) = session.scalars(select(Dataset).where(Dataset.name == "site upload")).all()
        assert Path(upload.root).is_relative_to(settings.storage_dir) and any(Path(upload.root).rglob("*.*"))
    close_engine(env)
    assert (settings.home / "secret-key").read_text() == (Path(source["FRACTURE_HOME"]) / "secret-key").read_text()


@pytest.fixture
def dataset_zip(dataset_root: Path, tmp_path: Path) -> Path:
    return zipped_sample(dataset_root, tmp_path, "site", per_class=2)


# ---------------------------------------------------------------- SQLite


def test_sqlite_backup_restores_into_a_fresh_home(
    tmp_path: Path, fracture_env: dict[str, str], sample_images: list[Path], dataset_zip: Path
) -> None:
    job_id, csv = populate(fracture_env, sample_images[:6], dataset_zip)
    archive = tmp_path / "backups" / "fracture.tar"
    made = fracture(["backup", str(archive)], fracture_env, tmp_path)
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        names = tar.getnames()
    assert manifest["format"] == 1 and manifest["database"]["kind"] == "sqlite"
    assert manifest["alembic_revision"] == migrate.current(fracture_env["DATABASE_URL"])
    stored = sorted(p for p in Path(fracture_env["FRACTURE_HOME"], "storage").rglob("*") if p.is_file())
    assert manifest["storage"]["files"] == len(stored) == sum(n.startswith("storage/") for n in names)
    assert set(manifest["sha256"]) == set(names) - {"manifest.json"} and "home/secret-key" in names
    assert archive.stat().st_mode & 0o077 == 0

    fresh = base_env(tmp_path / "restored")
    done = fracture(["restore", str(archive)], fresh, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 dataset(s) unpacked in storage now read from" in done.stdout
    check_restored(fresh, job_id, csv, fracture_env)

    # Not into an installation that holds data, unless forced.
    again = fracture(["restore", str(archive)], fresh, tmp_path)
    assert again.returncode == 1 and "not empty" in again.stderr and "--force" in again.stderr
    forced = fracture(["restore", "--force", str(archive)], fresh, tmp_path)
    assert forced.returncode == 0, forced.stderr
    check_restored(fresh, job_id, csv, fracture_env)


def test_a_damaged_archive_or_the_other_database_kind_is_refused_before_anything_changes(
    tmp_path: Path, fracture_env: dict[str, str], sample_images: list[Path]
) -> None:
    create_job(fracture_env, sample_images[:2])
    archive = tmp_path / "fracture.tar"
    assert fracture(["backup", str(archive)], fracture_env, tmp_path).returncode == 0
    damaged = tmp_path / "damaged.tar"
    shutil.copyfile(archive, damaged)
    with tarfile.open(archive) as tar:
        upload = next(m for m in tar.getmembers() if m.name.startswith("storage/uploads/"))
    with open(damaged, "r+b") as f:
        f.seek(upload.offset_data + 10)
        byte = f.read(1)
        f.seek(upload.offset_data + 10)
        f.write(bytes([byte[0] ^ 0xFF]))

    fresh = base_env(tmp_path / "fresh")
    refused = fracture(["restore", str(damaged)], fresh, tmp_path)
    assert refused.returncode == 1 and f"{upload.name} is damaged" in refused.stderr, refused.stderr
    assert not (tmp_path / "fresh" / "fracture.sqlite").exists()
    assert not [p for p in (tmp_path / "fresh" / "storage").rglob("*")]

    postgres = {**fresh, "DATABASE_URL": "postgresql+psycopg://fracture@127.0.0.1:1/fracture"}
    other = fracture(["restore", str(archive)], postgres, tmp_path)
    assert other.returncode == 1 and "holds a SQLite database" in other.stderr and "PostgreSQL" in other.stderr

    (tmp_path / "not-a-backup.tar").write_bytes(b"no tar here")
    junk = fracture(["restore", str(tmp_path / "not-a-backup.tar")], fresh, tmp_path)
    assert junk.returncode == 1 and "not a tar archive" in junk.stderr


def test_a_backup_of_an_older_schema_is_restored_then_migrated_to_head(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    head, previous = script.get_current_head(), script.get_revision(script.get_current_head()).down_revision
    assert isinstance(previous, str)
    old = base_env(tmp_path / "old")
    migrate.upgrade(old["DATABASE_URL"], previous)
    archive = tmp_path / "old.tar.gz"
    made = fracture(["backup", str(archive)], old, tmp_path)
    assert made.returncode == 0, made.stderr
    fresh = base_env(tmp_path / "new")
    done = fracture(["restore", str(archive)], fresh, tmp_path)
    assert done.returncode == 0, done.stderr
    assert migrate.current(fresh["DATABASE_URL"]) == head


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def second_pg_url(pg_server: Cluster) -> Iterator[str]:  # noqa: F811
    """Another empty database on the session's server (the restore's target), dropped after the test."""
    import psycopg

    from fracture.db import get_engine

    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host="127.0.0.1", port=pg_server.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        yield pg_server.url(name)
        get_engine(pg_server.url(name)).dispose()
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_postgresql_backup_restores_into_a_fresh_database(
    tmp_path: Path, pg_url: str, second_pg_url: str, tiny_checkpoint: Path,  # noqa: F811
    sample_images: list[Path], dataset_zip: Path,
) -> None:
    source = {**base_env(tmp_path / "home"), "DATABASE_URL": pg_url}
    migrate.upgrade(pg_url)
    source["FRACTURE_MODEL_VERSION_ID"] = str(register_model(source, tiny_checkpoint))
    add_user(source, TEST_ADMIN, admin=True)
    job_id, csv = populate(source, sample_images[:6], dataset_zip)
    archive = tmp_path / "pg.tar"
    made = fracture(["backup", str(archive)], source, tmp_path)
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        assert "database/fracture.pgdump" in tar.getnames()

    fresh = {**base_env(tmp_path / "restored"), "DATABASE_URL": second_pg_url}
    done = fracture(["restore", str(archive)], fresh, tmp_path)
    assert done.returncode == 0, done.stderr
    check_restored(fresh, job_id, csv, source)

    again = fracture(["restore", str(archive)], fresh, tmp_path)
    assert again.returncode == 1 and "the database has rows in" in again.stderr
    forced = fracture(["restore", "--force", str(archive)], fresh, tmp_path)
    assert forced.returncode == 0, forced.stderr
    check_restored(fresh, job_id, csv, source)
    sqlite = base_env(tmp_path / "sqlite")
    other = fracture(["restore", str(archive)], sqlite, tmp_path)
    assert other.returncode == 1 and "holds a PostgreSQL database" in other.stderr
