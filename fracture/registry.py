"""The model registry: versions in the database, checkpoint files in storage, one active version."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.config import Settings
from fracture.models import MAX_ROW_ID, ModelActivation, ModelStatus, ModelVersion
from fracture.storage import Storage

if TYPE_CHECKING:
    from fracture.ml.inference import Predictor

# The name a fresh installation gives the release checkpoint shipped in the repository.
SEED_VERSION = "release-1"
# Other checkpoints shipped beside it (folder under the release's, version name), registered as candidates on a
# fresh installation so that a department can evaluate them on its own images before promoting one.
# two-views-1: the release's own weights served on 2 test-time views in bfloat16 (fracture/release/cheaper.md).
# robust-3: the release's recipe with the frame trimmed and the grey levels equalised before the network, then
# fine-tuned with the acquisition changes (fracture/release/robust-framing/model_card.md).
# two-site-2: robust-3's preprocessing on both sources (robust-1 fine-tuned; fracture/release/two-site-trim/).
# two-site-3: two-site-2 fine-tuned with the grey levels equalised at decode time and the acquisition changes drawn
# before it (fracture/release/two-site-eqf/).
# two-site-4: two-site-3 at output stride 16 (an 8x8 heatmap), taught by the second site's fracture boxes where to
# look (fracture/release/two-site-os16/). two-site-5: two-site-3 at output stride 16 without the boxes, the best
# classifier of both sources so far (fracture/release/two-site-os16-plain/). two-site-6: two-site-5 taught by the
# boxes, its epochs chosen on val's ROC-AUC and pointing game together: it classifies and points
# (fracture/release/two-site-pointing/). two-site-7: two-site-5 taught by the boxes at output stride 8 (a 16x16
# heatmap), the best pointing game so far (fracture/release/two-site-os8/). two-site-8: two-site-7 fine-tuned at a
# 160-px input (a 20x20 heatmap, a fracture box 16 px instead of 13), the best classifier of both sources so far
# (fracture/release/two-site-160/). two-site-9: two-site-8 fine-tuned at a 192-px input, the first to meet the first
# source's unchanged target at its threshold (fracture/release/two-site-192/). site-1: two-site-8 fine-tuned on the
# second site's training part alone for 40 epochs, the first to meet that site's targets (a department's own
# fine-tune; fracture/release/site-160/). two-site-11: site-1 fine-tuned on both sources again, the closest to one
# model for both (fracture/release/two-site-11/). two-site-12: two-site-11 blended in weight space with site-1, the
# model it was fine-tuned from (--interpolate 0.85): the site's targets and the first source nearly two-site-11's
# (fracture/release/two-site-12/).
SHIPPED_CANDIDATES = (("two-site", "two-site-1"), ("robust", "robust-1"), ("robust-boxes", "robust-2"),
                      ("two-views", "two-views-1"), ("robust-framing", "robust-3"), ("two-site-trim", "two-site-2"),
                      ("two-site-eqf", "two-site-3"), ("two-site-os16", "two-site-4"),
                      ("two-site-os16-plain", "two-site-5"), ("two-site-pointing", "two-site-6"),
                      ("two-site-os8", "two-site-7"), ("two-site-160", "two-site-8"),
                      ("two-site-192", "two-site-9"), ("site-160", "site-1"),
                      ("two-site-11", "two-site-11"), ("two-site-12", "two-site-12"))


def newest_first(session: Session) -> list[ModelVersion]:
    """Every registered version, the newest first: the models page, the API's list and the forms' choices."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())))


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)).first()


def next_name(session: Session) -> str:
    count = len(session.scalars(select(ModelVersion.id)).all())
    return f"v{count + 1}"


def register_checkpoint(
    session: Session,
    storage: Storage,
    checkpoint_file: str | Path,
    *,
    name: str | None = None,
    plots: dict[str, str] | None = None,
    notes: str | None = None,
) -> ModelVersion:
    """Add a checkpoint file as a candidate version and copy it into storage.

    The row is flushed first: its unique name is claimed (a concurrent registration of the same name waits, then
    fails) before any byte is written, so a loser never overwrites the winner's file. The copy is then atomic
    (a temporary file renamed), so a worker loading the version never reads a half-written file.
    """
    # Imported here, not at the top: torch costs the web processes seconds at start and nothing else needs it.
    from fracture.ml.checkpoint import read_payload, sha256_file

    payload = read_payload(checkpoint_file)
    name = name or next_name(session)
    key = f"models/{name}/model.pt"
    metrics: dict[str, Any] = payload.get("metrics") or {}
    version = ModelVersion(
        name=name,
        status=ModelStatus.CANDIDATE,
        arch=str(payload["arch"]),
        checkpoint_key=key,
        checkpoint_sha256=sha256_file(Path(checkpoint_file)),
        threshold=float(payload["threshold"]),
        classes=[str(c) for c in payload["classes"]],
        metrics=metrics,
        plots=plots or {},
        data_fingerprint=payload.get("data_fingerprint"),
        split_policy=payload.get("split_policy"),
        selection_metric=payload.get("selection_metric"),
        notes=notes,
    )
    session.add(version)
    session.flush()
    with open(checkpoint_file, "rb") as src:
        storage.write_stream(key, src)
    return version


def promote(session: Session, version: ModelVersion) -> None:
    """Make `version` the active one, retire the previous active version and record the activation.

    Promoting the version that is already active changes nothing (a form sent twice promotes once).
    """
    now = datetime.now(UTC)
    if version.status == ModelStatus.ACTIVE and version.promoted_at is not None:
        return
    for other in session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)):
        if other.id != version.id:
            other.status, other.retired_at = ModelStatus.RETIRED, now
    version.status, version.promoted_at, version.retired_at = ModelStatus.ACTIVE, now, None
    if version.id is None:
        session.flush()
    session.add(ModelActivation(version_id=version.id, activated_at=now))


class RegistryError(ValueError):
    """A registry action that cannot be taken as asked; the message says why."""


def find_version(session: Session, ref: str | int) -> ModelVersion | None:
    """A version by its name ("release-1") or its id; None when there is none. The one lookup by reference.

    The rule: a string is a name first; only when no version has that exact name is an all-digit string taken as
    an id. So a name always finds its own version (even a name made of digits, which would otherwise be hidden
    behind the version with that id), and "7" still finds version #7 when no version is named "7". An int is an
    id (a bool is neither). Surrounding spaces are ignored.
    """
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return _by_id(session, ref)
    text = str(ref).strip()
    if not text:
        return None
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == text)).first()
    if version is None and text.isascii() and text.isdigit():  # not "²": str.isdigit takes it, int() does not
        version = _by_id(session, int(text))
    return version


def _by_id(session: Session, version_id: int) -> ModelVersion | None:
    # A number past the column's integer names no version (and must never reach the database driver).
    return session.get(ModelVersion, version_id) if 0 < version_id <= MAX_ROW_ID else None


def record_decision(version: ModelVersion, reason: str) -> None:
    """Keep one readable sentence on why the last decision about `version` was taken."""
    version.decision = reason


def retire(session: Session, version: ModelVersion) -> None:
    """Take a candidate (or an already retired version) out of service; the active version cannot be retired."""
    if version.status == ModelStatus.ACTIVE:
        raise RegistryError(f"{version.name} is the active version: promote another version (or roll back) first")
    if version.status != ModelStatus.RETIRED:
        version.status, version.retired_at = ModelStatus.RETIRED, datetime.now(UTC)


# ---------------------------------------------------------------- rollback
# The activations form a stack (model_activations, oldest first). A rollback undoes the newest activations down to
# the newest one of another version, and makes that version active again; undone activations are never gone back
# to. So a rollback after a rollback goes further back, never back to the version it just replaced.


def _live_history(session: Session) -> list[ModelActivation]:
    """The activations no rollback has undone, newest first."""
    return list(session.scalars(select(ModelActivation).where(ModelActivation.rolled_back_at.is_(None))
                                .order_by(ModelActivation.id.desc())))


def _step_back(live: list[ModelActivation], active_id: int | None) -> int | None:
    """The index in `live` (newest first) of the activation a rollback from `active_id` returns to; None: none."""
    return next((i for i, entry in enumerate(live) if entry.version_id != active_id), None)


def rollback_path(session: Session, steps: int = 2) -> list[ModelVersion]:
    """The versions that `steps` successive rollbacks would make active, nearest first (fewer where history ends)."""
    live = _live_history(session)
    current = active_version(session)
    active_id = current.id if current is not None else None
    path: list[ModelVersion] = []
    while len(path) < steps:
        index = _step_back(live, active_id)
        if index is None:
            break
        live = live[index:]  # the activations above it are undone by that rollback
        active_id = live[0].version_id
        path.append(session.get_one(ModelVersion, active_id))
    return path


def previous_active(session: Session) -> ModelVersion | None:
    """The version active before the current one: the one a rollback makes active; None when there is none."""
    path = rollback_path(session, steps=1)
    return path[0] if path else None


def rollback(session: Session) -> tuple[ModelVersion, ModelVersion | None]:
    """Make the version active before the current one active again; returns (now active, replaced).

    The replaced version's activation is marked undone, so a second rollback goes further back (or is refused when
    there is no earlier version): it never puts back the version the first one took out of service.
    """
    live = _live_history(session)
    replaced = active_version(session)
    index = _step_back(live, replaced.id if replaced is not None else None)
    if index is None:
        raise RegistryError("there is no previously active version to roll back to")
    now = datetime.now(UTC)
    for entry in live[:index]:
        entry.rolled_back_at = now
    target = session.get_one(ModelVersion, live[index].version_id)
    for other in session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE)):
        other.status, other.retired_at = ModelStatus.RETIRED, now
    target.status, target.promoted_at, target.retired_at = ModelStatus.ACTIVE, now, None
    return target, replaced


def ensure_seed_model(session: Session, settings: Settings) -> ModelVersion | None:
    """On a fresh install, register the release checkpoint shipped in the repository as active."""
    current = active_version(session)
    if current is not None or settings.seed_model is None or not Path(settings.seed_model).is_file():
        return current
    if session.scalars(select(ModelVersion.id)).first() is not None:
        return None  # versions exist but none is active: an admin's choice, not ours to undo
    storage = Storage(settings.storage_dir)
    version = register_checkpoint(
        session, storage, settings.seed_model, name=SEED_VERSION,
        notes="release checkpoint shipped with the repository",
    )
    version.plots = store_plots(storage, version.name, Path(settings.seed_model).parent / "plots")
    promote(session, version)
    for folder, name in SHIPPED_CANDIDATES:
        shipped = Path(settings.seed_model).parent / folder
        if (shipped / "model.pt").is_file():
            candidate = register_checkpoint(session, storage, shipped / "model.pt", name=name,
                                            notes=f"shipped candidate: see {folder}/model_card.md in the release")
            candidate.plots = store_plots(storage, name, shipped / "plots")
    return version


def store_plots(storage: Storage, version_name: str, folder: Path) -> dict[str, str]:
    """Copy a run's PNG plots into storage beside the version's checkpoint; returns {name: storage key}."""
    keys: dict[str, str] = {}
    for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        key = f"models/{version_name}/plots/{png.stem}.png"
        with open(png, "rb") as src:
            storage.write_stream(key, src)  # atomic: a page never shows half a plot
        keys[png.stem] = key
    return keys


def checkpoint_path(settings: Settings, version: ModelVersion) -> Path:
    return Storage(settings.storage_dir).path(version.checkpoint_key)


def verified_checkpoint(settings: Settings, version: ModelVersion) -> Path:
    """`version`'s checkpoint file in storage, after checking it is the one registered (its SHA-256); CheckpointError
    when it is missing or another file."""
    from fracture.ml.checkpoint import CheckpointError, sha256_file

    path = checkpoint_path(settings, version)
    if not path.is_file():
        raise CheckpointError(
            f"model file of version {version.name} is missing from storage ({version.checkpoint_key})")
    if sha256_file(path) != version.checkpoint_sha256:
        raise CheckpointError(f"model file of version {version.name} does not match its recorded SHA-256")
    return path


def load_predictor(settings: Settings, version: ModelVersion) -> Predictor:
    """`version`'s checkpoint loaded for serving, after checking the file is the one registered (its SHA-256).

    Raises CheckpointError when the file is missing or not the recorded one: a replaced or damaged file never
    serves, nor is it measured by an evaluation or the promotion gate. Every loader of a version goes through here.
    """
    # Imported here: torch costs the web processes seconds at start, and the web imports this module.
    from fracture.ml.inference import Predictor

    path = verified_checkpoint(settings, version)
    return Predictor.from_file(path, batch_size=settings.batch_size, max_pixels=settings.max_image_pixels,
                               decoder=settings.decoder, decode_threads=settings.decode_threads)
