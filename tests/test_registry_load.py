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
    assert predictor.ckpt.classes and predictor.batch_size == settings.batch_size
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
