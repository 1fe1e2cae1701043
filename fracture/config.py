"""Settings read from the environment, with defaults for the embedded one-machine mode."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RELEASE_DIR = Path(__file__).resolve().parent / "release"


def _int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name)
    return int(value) if value not in (None, "") else default


def _float(env: dict[str, str], name: str, default: float) -> float:
    value = env.get(name)
    return float(value) if value not in (None, "") else default


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once per process from environment variables."""

    home: Path
    database_url: str
    broker_url: str
    storage_dir: Path
    redis_url: str | None = None
    chunk_size: int = 64
    batch_size: int = 32
    max_upload_bytes: int = 2 * 1024**3
    max_files_per_job: int = 20_000
    max_form_parts: int = 25_000
    max_zip_members: int = 50_000
    max_zip_total_bytes: int = 8 * 1024**3
    max_zip_ratio: int = 200
    max_image_pixels: int = 64_000_000
    task_time_limit_s: int = 900
    worker_max_memory_kb: int = 4_000_000
    # Redis redelivers a task whose worker died unacked after this long; must exceed the longest task.
    visibility_timeout_s: int = 3600
    # The reaper re-enqueues a job's missing chunks after this long without progress (and an empty queue).
    reaper_stale_s: int = 300
    reaper_interval_s: int = 60
    # How often the beat asks the inference worker to start due schedules (tests make it a second).
    schedules_tick_s: int = 60
    # A chunk whose worker died this many times on it gets error rows instead of another delivery.
    max_chunk_attempts: int = 3
    dataset_dir: Path | None = None
    # The only folders under which an admin may register a dataset on the server (nothing else is ever read).
    dataset_roots: tuple[Path, ...] = ()
    training_time_limit_s: int = 6 * 3600
    secret_key: str = field(default="dev-only-change-me", repr=False)
    # Send the session cookie over https only; off for the embedded http://127.0.0.1 mode.
    session_cookie_secure: bool = False
    seed_model: Path | None = None
    # Safe promotion: a finished run becomes active only if, on the same images as the active version, it
    # reaches these floors at its own threshold, loses at most the tolerance of ROC-AUC, and the images are
    # enough to tell (this many of each class); below that it stays a candidate.
    promote_min_sensitivity: float = 0.95
    promote_min_specificity: float = 0.90
    promote_auc_tolerance: float = 0.01
    promote_min_per_class: int = 50
    # DICOM patient name, id and birth date: read, stored and shown (JSON, CSV) only when this is on.
    show_patient_identifiers: bool = False
    # The worker writes a small JPEG of each image as it classifies it (the job page's reading list).
    thumbnails: bool = True
    # "Uncertain" on the job page: a probability within this distance of the model's threshold.
    uncertain_margin: float = 0.1
    # Compute the heatmap of every image the model calls positive as soon as its chunk is classified (each on its
    # own task of the inference queue); off, heatmaps are made only when someone asks for one.
    heatmaps_above_threshold: bool = False

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")


def get_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ); nothing is read at import time."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("FRACTURE_HOME") or Path.cwd() / "fracture-data").resolve()
    redis_url = env.get("REDIS_URL") or None
    broker_url = env.get("BROKER_URL") or redis_url or f"sqla+sqlite:///{home / 'broker.sqlite'}"
    database_url = env.get("DATABASE_URL") or f"sqlite:///{home / 'fracture.sqlite'}"
    seed = env.get("FRACTURE_SEED_MODEL")
    default_seed = RELEASE_DIR / "model.pt"
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        redis_url=redis_url,
        storage_dir=Path(env.get("STORAGE_DIR") or home / "storage").resolve(),
        chunk_size=_int(env, "CHUNK_SIZE", 64),
        batch_size=_int(env, "BATCH_SIZE", 32),
        max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 2 * 1024**3),
        max_files_per_job=_int(env, "MAX_FILES_PER_JOB", 20_000),
        max_form_parts=_int(env, "MAX_FORM_PARTS", 25_000),
        max_zip_members=_int(env, "MAX_ZIP_MEMBERS", 50_000),
        max_zip_total_bytes=_int(env, "MAX_ZIP_TOTAL_BYTES", 8 * 1024**3),
        max_zip_ratio=_int(env, "MAX_ZIP_RATIO", 200),
        max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 64_000_000),
        task_time_limit_s=_int(env, "TASK_TIME_LIMIT_S", 900),
        worker_max_memory_kb=_int(env, "WORKER_MAX_MEMORY_KB", 4_000_000),
        visibility_timeout_s=_int(env, "BROKER_VISIBILITY_TIMEOUT_S", 3600),
        reaper_stale_s=_int(env, "REAPER_STALE_S", 300),
        reaper_interval_s=_int(env, "REAPER_INTERVAL_S", 60),
        schedules_tick_s=max(1, _int(env, "SCHEDULES_TICK_S", 60)),
        max_chunk_attempts=_int(env, "MAX_CHUNK_ATTEMPTS", 3),
        dataset_dir=Path(env["FRACTURE_DATASET"]) if env.get("FRACTURE_DATASET") else None,
        dataset_roots=tuple(
            Path(p).resolve() for p in (env.get("DATASET_ROOTS") or str(home / "datasets")).split(os.pathsep) if p
        ),
        training_time_limit_s=_int(env, "TRAINING_TIME_LIMIT_S", 6 * 3600),
        secret_key=env.get("SECRET_KEY") or "dev-only-change-me",
        session_cookie_secure=_flag(env, "SESSION_COOKIE_SECURE"),
        seed_model=Path(seed) if seed else (default_seed if default_seed.exists() else None),
        promote_min_sensitivity=_float(env, "PROMOTE_MIN_SENSITIVITY", 0.95),
        promote_min_specificity=_float(env, "PROMOTE_MIN_SPECIFICITY", 0.90),
        promote_auc_tolerance=_float(env, "PROMOTE_AUC_TOLERANCE", 0.01),
        promote_min_per_class=_int(env, "PROMOTE_MIN_PER_CLASS", 50),
        show_patient_identifiers=_flag(env, "SHOW_PATIENT_IDENTIFIERS"),
        thumbnails=env.get("THUMBNAILS", "1").strip().lower() not in ("0", "false", "no", "off"),
        uncertain_margin=_float(env, "UNCERTAIN_MARGIN", 0.1),
        heatmaps_above_threshold=_flag(env, "HEATMAPS_ABOVE_THRESHOLD"),
    )
