"""Settings read from the environment, with defaults for the embedded one-machine mode."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
RELEASE_DIR = Path(__file__).resolve().parent / "release"
T = TypeVar("T")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def setting(env_name: str, default: T, *, shown: bool = True, kind: type | None = None) -> T:
    """A Settings field read from the environment variable `env_name`: its one default is declared here.

    get_settings reads every such field; an unset or empty variable keeps the default. A default of None (decided
    later, e.g. by the device) names the `kind` a set value is read as.
    """
    return field(default=default, repr=shown, metadata={"env": env_name, "kind": kind})


def _parse(raw: str, default: object) -> object:
    """An environment value as the type of the field's default. A flag changes from its default only when set to
    a clear opposite (on, 1, true, yes for a flag off by default; off, 0, false, no for one on by default)."""
    if isinstance(default, bool):
        word = raw.strip().lower()
        return word not in _FALSE if default else word in _TRUE
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    """{field: value} for every field declared with `setting`: the variable's value, or the field's default."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata.get("env")
        if name is None:
            continue
        raw = env.get(name)
        typed = f.default if f.metadata.get("kind") is None else f.metadata["kind"]()
        values[f.name] = f.default if raw in (None, "") else _parse(str(raw), typed)
    return values


# An AE title (PS3.5 6.2): at most 16 characters, no backslash, no control characters, not only spaces.
_AE_TITLE = re.compile(r"^[^\\\x00-\x1f\x7f]{1,16}$")


@dataclass(frozen=True)
class DicomPeer:
    """A DICOM application entity the node talks to: its AE title and where it listens."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def ae_title(text: str, setting_name: str) -> str:
    """`text` as an AE title (leading and trailing spaces are not significant), or raise ValueError naming the
    setting."""
    title = text.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(f"{setting_name}: {text!r} is not an AE title (1-16 characters, no backslash)")
    return title


def parse_peers(raw: str) -> tuple[DicomPeer, ...]:
    """DICOM_PEERS ("PACS@10.0.0.5:104,MODALITY@host:11112") as peers; raise ValueError on a malformed entry."""
    peers = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        title, at, address = entry.rpartition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and host and port.isdecimal() and 0 < int(port) < 65536):
            raise ValueError(f"DICOM_PEERS: {entry!r} is not AE@host:port")
        peers.append(DicomPeer(ae_title(title, "DICOM_PEERS"), host.strip("[]"), int(port)))
    return tuple(peers)


def parse_dicomweb_peers(raw: str) -> tuple[tuple[str, str], ...]:
    """DICOMWEB_PEERS ("PACSWEB=https://pacs.example/dicom-web,...") as (name, base URL) pairs; ValueError if bad."""
    peers = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, equals, url = entry.partition("=")
        if not equals or not url.strip().lower().startswith(("http://", "https://")):
            raise ValueError(f"DICOMWEB_PEERS: {entry!r} is not NAME=http(s)://host/dicom-web")
        peers.append((ae_title(name, "DICOMWEB_PEERS"), url.strip().rstrip("/")))
    return tuple(peers)


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once per process from environment variables."""

    home: Path
    database_url: str
    broker_url: str
    storage_dir: Path
    redis_url: str | None = None
    chunk_size: int = setting("CHUNK_SIZE", 64)
    # Images per forward pass, and the threads that read and decode them for one predictor; unset, by the device
    # (fracture.ml.inference.device_defaults): 32 and 2 on a CPU, 256 and one per core on a GPU.
    batch_size: int | None = setting("BATCH_SIZE", None, kind=int)
    decode_threads: int | None = setting("DECODE_THREADS", None, kind=int)
    # JPEG decoding: "torchvision" (in batches on the predictor's device: nvJPEG on a GPU), "pillow", or "auto"
    # (torchvision on a CUDA device, Pillow otherwise). Other formats, and JPEGs torchvision refuses, use Pillow.
    decoder: str = setting("DECODER", "auto")
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 2 * 1024**3)
    max_files_per_job: int = setting("MAX_FILES_PER_JOB", 20_000)
    max_form_parts: int = setting("MAX_FORM_PARTS", 25_000)
    max_zip_members: int = setting("MAX_ZIP_MEMBERS", 50_000)
    max_zip_total_bytes: int = setting("MAX_ZIP_TOTAL_BYTES", 8 * 1024**3)
    max_zip_ratio: int = setting("MAX_ZIP_RATIO", 200)
    max_image_pixels: int = setting("MAX_IMAGE_PIXELS", 64_000_000)
    task_time_limit_s: int = setting("TASK_TIME_LIMIT_S", 900)
    worker_max_memory_kb: int = setting("WORKER_MAX_MEMORY_KB", 4_000_000)
    # Redis redelivers a task whose worker died unacked after this long; must exceed the longest task.
    visibility_timeout_s: int = setting("BROKER_VISIBILITY_TIMEOUT_S", 3600)
    # The reaper re-enqueues a job's missing chunks after this long without progress (and an empty queue).
    reaper_stale_s: int = setting("REAPER_STALE_S", 300)
    # Often enough that work whose worker died is failed within a minute (HEARTBEAT_STALE_S + this).
    reaper_interval_s: int = setting("REAPER_INTERVAL_S", 20)
    # A running training, evaluation or dataset validation records that it is alive this often; the reaper fails
    # one whose last beat is older than HEARTBEAT_STALE_S (its worker was killed, ran out of memory, restarted).
    heartbeat_interval_s: int = setting("HEARTBEAT_INTERVAL_S", 10)
    heartbeat_stale_s: int = setting("HEARTBEAT_STALE_S", 30)
    # How often the beat asks the inference worker to start due schedules (tests make it a second).
    schedules_tick_s: int = setting("SCHEDULES_TICK_S", 60)
    # A chunk whose worker died this many times on it gets error rows instead of another delivery.
    max_chunk_attempts: int = setting("MAX_CHUNK_ATTEMPTS", 3)
    dataset_dir: Path | None = None
    # The only folders under which an admin may register a dataset on the server (nothing else is ever read).
    dataset_roots: tuple[Path, ...] = ()
    training_time_limit_s: int = setting("TRAINING_TIME_LIMIT_S", 6 * 3600)
    secret_key: str = setting("SECRET_KEY", "dev-only-change-me", shown=False)
    # Send the session cookie over https only; off for the embedded http://127.0.0.1 mode.
    session_cookie_secure: bool = setting("SESSION_COOKIE_SECURE", False)
    # How many reverse proxies in front of the web set X-Forwarded-For/-Proto/-Host (werkzeug's ProxyFix trusts
    # that many hops); 0: the headers are ignored, so a client cannot forge its address.
    trusted_proxy_hops: int = setting("TRUSTED_PROXY_HOPS", 0)
    seed_model: Path | None = None
    # Safe promotion: a finished run becomes active only if, on the same images as the active version, it
    # reaches these floors at its own threshold, loses at most the tolerance of ROC-AUC, and the images are
    # enough to tell (this many of each class); below that it stays a candidate.
    promote_min_sensitivity: float = setting("PROMOTE_MIN_SENSITIVITY", 0.95)
    promote_min_specificity: float = setting("PROMOTE_MIN_SPECIFICITY", 0.90)
    promote_auc_tolerance: float = setting("PROMOTE_AUC_TOLERANCE", 0.01)
    promote_min_per_class: int = setting("PROMOTE_MIN_PER_CLASS", 50)
    # DICOM patient name, id and birth date: read, stored and shown (JSON, CSV) only when this is on.
    show_patient_identifiers: bool = setting("SHOW_PATIENT_IDENTIFIERS", False)
    # The worker writes a small JPEG of each image as it classifies it (the job page's reading list).
    thumbnails: bool = setting("THUMBNAILS", True)
    # "Uncertain" on the job page: a probability within this distance of the model's threshold.
    uncertain_margin: float = setting("UNCERTAIN_MARGIN", 0.1)
    # Compute the heatmap of every image the model calls positive as soon as its chunk is classified (each on its
    # own task of the inference queue); off, heatmaps are made only when someone asks for one.
    heatmaps_above_threshold: bool = setting("HEATMAPS_ABOVE_THRESHOLD", False)
    # The DICOM node (a C-STORE SCP taking X-rays from the PACS): off while the port is 0 (unset).
    dicom_port: int = setting("DICOM_PORT", 0)
    dicom_ae_title: str = setting("DICOM_AE_TITLE", "FRACTURE")
    # The only callers the node accepts (AE@host:port, comma-separated); any other association is rejected.
    dicom_peers: tuple[DicomPeer, ...] = ()
    # Where reports are to be sent (AE titles of DICOM_PEERS); read here, used by the report sender.
    dicom_send_results_to: tuple[str, ...] = ()
    # Peers reached by DICOMweb STOW-RS instead of C-STORE (NAME=base URL); DICOM_SEND_RESULTS_TO may name them.
    dicomweb_peers: tuple[tuple[str, str], ...] = ()
    # A study becomes a job once no new instance of it arrived for this long.
    dicom_study_quiet_s: int = setting("DICOM_STUDY_QUIET_S", 30)
    # The user the node's jobs belong to; created (not an admin) on first use.
    dicom_owner: str = setting("DICOM_OWNER", "dicom-node")
    # With results sent (DICOM_SEND_RESULTS_TO), also a Secondary Capture of each image called fractured, its
    # heatmap burned in: what a viewer without SR support still shows.
    dicom_send_heatmaps: bool = setting("DICOM_SEND_HEATMAPS", True)
    # The bearer token Prometheus sends to scrape /metrics; unset, /metrics answers only the same machine (loopback).
    metrics_token: str = setting("METRICS_TOKEN", "", shown=False)
    # Every process's log lines: "text" (readable) or "json" (one object per line, for a log shipper); fracture.logs.
    log_format: str = setting("LOG_FORMAT", "text")

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")


def get_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ); nothing is read at import time.

    Every field declared with `setting` is read by its variable with its one default (the field's); only the
    settings whose defaults derive from others (FRACTURE_HOME's folders and URLs, the shipped seed model) are
    resolved here.
    """
    env = dict(os.environ if env is None else env)
    home = Path(env.get("FRACTURE_HOME") or Path.cwd() / "fracture-data").resolve()
    redis_url = env.get("REDIS_URL") or None
    broker_url = env.get("BROKER_URL") or redis_url or f"sqla+sqlite:///{home / 'broker.sqlite'}"
    database_url = env.get("DATABASE_URL") or f"sqlite:///{home / 'fracture.sqlite'}"
    seed = env.get("FRACTURE_SEED_MODEL")
    default_seed = RELEASE_DIR / "model.pt"
    values = _from_env(env)
    values["schedules_tick_s"] = max(1, values["schedules_tick_s"])
    values["dicom_ae_title"] = ae_title(values["dicom_ae_title"], "DICOM_AE_TITLE")
    values["decoder"] = values["decoder"].strip().lower()
    if values["decoder"] not in ("auto", "pillow", "torchvision"):
        raise ValueError(f"DECODER: {values['decoder']!r} is not auto, pillow or torchvision")
    for name, variable in (("batch_size", "BATCH_SIZE"), ("decode_threads", "DECODE_THREADS")):
        if values[name] is not None and values[name] < 1:
            raise ValueError(f"{variable}: {values[name]} is not a positive number")
    values["log_format"] = values["log_format"].strip().lower()
    if values["log_format"] not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT: {values['log_format']!r} is not text or json")
    send_to = (env.get("DICOM_SEND_RESULTS_TO") or "").split(",")
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=broker_url,
        redis_url=redis_url,
        storage_dir=Path(env.get("STORAGE_DIR") or home / "storage").resolve(),
        dataset_dir=Path(env["FRACTURE_DATASET"]) if env.get("FRACTURE_DATASET") else None,
        dataset_roots=tuple(
            Path(p).resolve() for p in (env.get("DATASET_ROOTS") or str(home / "datasets")).split(os.pathsep) if p
        ),
        seed_model=Path(seed) if seed else (default_seed if default_seed.exists() else None),
        dicom_peers=parse_peers(env.get("DICOM_PEERS") or ""),
        dicomweb_peers=parse_dicomweb_peers(env.get("DICOMWEB_PEERS") or ""),
        dicom_send_results_to=tuple(ae_title(t, "DICOM_SEND_RESULTS_TO") for t in send_to if t.strip()),
        **values,
    )
