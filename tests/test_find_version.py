"""registry.find_version, the one lookup of a model version by reference, on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

from fracture import migrate
from fracture.db import session_scope
from fracture.models import ModelVersion
from fracture.registry import find_version


def _version(name: str) -> ModelVersion:
    return ModelVersion(name=name, arch="tiny", checkpoint_key=f"models/{name}/model.pt", checkpoint_sha256="0" * 64,
                        threshold=0.5)


def test_a_name_first_then_digits_as_an_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fracture.sqlite'}"
    migrate.upgrade(url)
    with session_scope(url) as s:
        s.add_all([_version("release-1"), _version("v2"), _version("1")])  # ids 1, 2, 3; #3 is named "1"
    with session_scope(url) as s:
        assert find_version(s, "release-1").id == 1  # type: ignore[union-attr]
        assert find_version(s, " v2 ").id == 2  # type: ignore[union-attr]
        assert find_version(s, "2").name == "v2"  # type: ignore[union-attr]  # no version named "2": id 2
        assert find_version(s, "1").name == "1"  # type: ignore[union-attr]  # the exact name wins over id 1
        assert find_version(s, 1).name == "release-1"  # type: ignore[union-attr]  # an int is an id
        assert find_version(s, "9") is None and find_version(s, "nope") is None and find_version(s, " ") is None
        assert find_version(s, True) is None  # a bool is not an id


def test_a_number_past_the_id_column_or_a_unicode_digit_finds_nothing(tmp_path: Path) -> None:
    """Found by schemathesis: {"model_version": 253760449694000996155392} answered 500 (an overflow in the driver)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    with session_scope(url) as session:
        for ref in (253760449694000996155392, "253760449694000996155392", 2**31, "²", -1, 0):
            assert find_version(session, ref) is None, ref
