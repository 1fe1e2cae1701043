"""registry.load_predictor: the one loader of a version for serving, with the SHA-256 check, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fracture.config import Settings
from fracture.db import session_scope
from fracture.ml.checkpoint import CheckpointError
from fracture.registry import active_version, checkpoint_path, load_predictor


def _active(settings: Settings):  # type: ignore[no-untyped-def]
    with session_scope(settings.database_url) as session:
        version = active_version(session)
    assert version is not None
    return version


def test_the_registered_file_loads(settings: Settings, sample_images: list[Path]) -> None:
    predictor = load_predictor(settings, _active(settings))
    assert predictor.ckpt.classes
    # BATCH_SIZE unset: the device's default (a CPU here)
    assert (settings.batch_size, predictor.batch_size, predictor.decoder) == (None, 32, "pillow")
    assert [p.probability is not None for p in predictor.predict(sample_images[:2])] == [True, True]


def test_a_changed_file_is_refused(settings: Settings) -> None:
    version = _active(settings)
    with open(checkpoint_path(settings, version), "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=f"model file of version {version.name} does not match its recorded"):
        load_predictor(settings, version)


def test_a_missing_file_is_refused(settings: Settings) -> None:
    version = _active(settings)
    checkpoint_path(settings, version).unlink()
    with pytest.raises(CheckpointError, match="is missing from storage"):
        load_predictor(settings, version)


RACE = """
import sys
from sqlalchemy.exc import IntegrityError
from fracture.config import get_settings
from fracture.db import session_scope
from fracture.registry import active_version, ensure_seed_model
settings = get_settings()
try:
    with session_scope(settings.database_url) as session:
        version = ensure_seed_model(session, settings)
        print("registered" if version is not None else "none")
except IntegrityError:
    print("lost")
"""


def test_two_processes_seeding_a_fresh_install_at_once_leave_one_intact_version(tmp_path: Path) -> None:
    """Every gunicorn process seeds the release model on its first request: the loser writes no byte of it."""
    import os
    import subprocess
    import sys

    from fracture.config import get_settings
    from fracture.migrate import upgrade
    from fracture.models import ModelVersion

    env = {**os.environ, "FRACTURE_HOME": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    for key in ("STORAGE_DIR", "FRACTURE_SEED_MODEL", "REDIS_URL", "BROKER_URL"):
        env.pop(key, None)
    settings = get_settings(env)
    assert settings.seed_model is not None, "the release checkpoint is shipped in fracture/release"
    upgrade(settings.database_url)
    racers = [subprocess.Popen([sys.executable, "-c", RACE], env=env, stdout=subprocess.PIPE, text=True)
              for _ in range(3)]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in racers)
    assert outcomes.count("registered") == 1 and set(outcomes) <= {"registered", "lost"}, outcomes
    with session_scope(settings.database_url) as session:
        [version] = [v for v in session.query(ModelVersion) if v.status == "active"]
        load_predictor(settings, version)  # the file is the registered one
