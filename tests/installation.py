"""A fresh fracture installation for a test: environment, database rows (users, models, jobs) and real images.

Plain Python (no pytest): the conftest fixtures and the harness build on it. Product modules are imported inside
the functions, so that importing this module stays cheap and never touches a database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fracture.config import Settings

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent
# The second site's labelled X-rays (train split only), beside the first dataset.
SITE_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "bone-fracture-roboflow-site"
TEST_ADMIN = "tester"
LABELS = ("fractured", "not fractured")
# Variables of the developer's shell that would point a test at the wrong database or broker, or show patients' names.
_SCRUBBED = ("FRACTURE_HOME", "DATABASE_URL", "BROKER_URL", "REDIS_URL", "STORAGE_DIR", "FRACTURE_SEED_MODEL",
             "SHOW_PATIENT_IDENTIFIERS")


# ---------------------------------------------------------------- the real dataset


def dataset_candidates() -> list[Path]:
    """Where the shared real dataset may be: $FRACTURE_DATASET first, then `<repo>/../shared/datasets/...`."""
    candidates = [REPO_ROOT.parent / "shared" / "datasets" / "bone-fracture-multiregion"]
    if os.environ.get("FRACTURE_DATASET"):
        candidates.insert(0, Path(os.environ["FRACTURE_DATASET"]))
    return candidates


def find_dataset() -> Path | None:
    """The first candidate that holds the dataset's `materialize` script, or None."""
    return next((root for root in dataset_candidates() if (root / "materialize").is_file()), None)


def materialize(dataset_root: Path, dest: Path, per_class: int, splits: str | None = None) -> Path:
    """Lay out a real sample of the dataset under `dest` with the dataset's own script."""
    cmd = [sys.executable, str(dataset_root / "materialize"), str(dest), "--per-class", str(per_class)]
    if splits:
        cmd += ["--splits", splits]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest


def materialize_both(dataset_root: Path, site_root: Path, dest: Path) -> Path:
    """A DATASET_ROOTS folder of real samples: `multi` (train/val/test, 6 per class), `site` (train, 10 per class)."""
    materialize(dataset_root, dest / "multi", per_class=6)
    materialize(site_root, dest / "site", per_class=10)
    return dest


def zipped_sample(dataset_root: Path, tmp_path: Path, name: str, per_class: int) -> Path:
    """A labelled zip of real X-rays as a site would send it: NAME/{train,val,test}/<class>/..., per_class each."""
    import zipfile

    folder = materialize(dataset_root, tmp_path / name, per_class=per_class)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in image_files(folder):
            zf.write(f, f.relative_to(folder.parent).as_posix())
    return archive


def small_training(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`fracture train` of a small real dataset at width 8 and 64 px (no progress bar) with `flags`, as a user runs
    it; fails the test with the run's last log lines if it does not succeed."""
    proc = subprocess.run([str(VENV_BIN / "fracture"), "train", "--data", str(data), "--out", str(out),
                           "--no-progress", "--width", "8", "--image-size", "64", *flags],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def image_files(root: Path) -> list[Path]:
    """Every file under `root`, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def save_tiny_checkpoint(path: Path, threshold: float = 0.5) -> Path:
    """Save a real but untrained checkpoint (width 8, 64 px) to `path`: plumbing only, never assert predictions
    (a `threshold` of 0 calls every image fractured, for the paths that only positive calls take)."""
    import torch

    from fracture.ml.checkpoint import save_checkpoint
    from fracture.ml.net import ModelArgs, build_model
    from fracture.ml.preprocess import PreprocessSpec

    torch.manual_seed(0)
    args = ModelArgs(width=8)
    save_checkpoint(path, build_model(args), args, PreprocessSpec(image_size=64), list(LABELS), threshold)
    return path


# ---------------------------------------------------------------- an installation


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


def new_installation(home: Path, checkpoint: Path) -> dict[str, str]:
    """Migrate a fresh SQLite installation in `home`, activate `checkpoint`, add the admin; return its env.

    The broker defaults to the embedded SQLite transport under FRACTURE_HOME; set REDIS_URL to change.
    The admin `tester`'s credentials are in FRACTURE_TEST_USER, FRACTURE_TEST_PASSWORD, FRACTURE_TEST_TOKEN.
    """
    from fracture.migrate import upgrade

    home.mkdir()
    env = base_env(home)
    upgrade(env["DATABASE_URL"])
    env["FRACTURE_MODEL_VERSION_ID"] = str(register_model(env, checkpoint))
    admin = add_user(env, TEST_ADMIN, admin=True)
    env.update(FRACTURE_TEST_USER=admin["username"], FRACTURE_TEST_PASSWORD=admin["password"],
               FRACTURE_TEST_TOKEN=admin["token"])
    return env


def add_user(env: dict[str, str], name: str, admin: bool = False) -> dict[str, str]:
    """Create a user in the installation of `env`; return {"username", "password", "token"}."""
    from fracture.accounts import create_user
    from fracture.config import get_settings
    from fracture.db import session_scope

    with session_scope(get_settings(env).database_url) as session:
        creds = create_user(session, name, admin=admin)
    return {"username": creds.username, "password": creds.password, "token": creds.token}


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of an API token."""
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


def add_dataset(settings: Settings, name: str, role: str = "training", status: str = "ready") -> int:
    """A dataset row (a folder that is not read) with `role` and `status`, made directly in the database."""
    from fracture.db import session_scope
    from fracture.models import Dataset

    with session_scope(settings.database_url) as session:
        dataset = Dataset(name=name, role=role, status=status, source="folder", root="/nowhere")
        session.add(dataset)
        session.flush()
        return dataset.id


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
