"""Fuzzing with hypothesis: the decoder and the zip ingest on random and mutated real bytes.

Every example must end in an accepted outcome (an image of the requested size or ImageError; an Upload or a
4xx UploadRefused), within a per-example deadline, and never write outside the storage folder. The runs are
derandomized and keep no example database, so CI sees the same examples every time.
"""

from __future__ import annotations

import dataclasses
import io
import re
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
from bad_files import encode, make_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image
from werkzeug.datastructures import FileStorage

from fracture.config import Settings, get_settings
from fracture.ml.preprocess import ImageError, decode
from fracture.storage import Storage
from web.jobs.ingest import Upload, UploadRefused, ingest_parts

# Hypothesis writes a cache of constants as soon as @given decorates a test: keep it out of the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "fracture-hypothesis")
SIZE = 64
FUZZ = settings(
    deadline=2000, max_examples=150, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Seeds(list[bytes]):
    """Real files to mutate; a short repr keeps hypothesis from printing megabytes of them."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


@pytest.fixture(scope="module")
def seeds(sample_images: list[Path]) -> Seeds:
    """Small real files of the dataset, two JPEGs and two PNGs (small keeps each example fast)."""
    by_kind: dict[bytes, list[bytes]] = {b"\xff\xd8": [], b"\x89P": []}
    for path in sorted(sample_images, key=lambda p: p.stat().st_size):
        data = path.read_bytes()
        if data[:2] in by_kind and len(by_kind[data[:2]]) < 2:
            by_kind[data[:2]].append(data)
    picked = [d for group in by_kind.values() for d in group]
    assert len(picked) == 4, "the sample should hold JPEGs and PNGs"
    return Seeds(picked)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real file damaged the ways files get damaged: bit flips, cuts, overwrites, insertions, splices."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "splice"]))
        # Half the time hit a zip header (after a "PK" signature), where a damaged byte changes the most.
        hot = [m.start() for m in re.finditer(b"PK", data)]
        if hot and draw(st.booleans()):
            at = min(draw(st.sampled_from(hot)) + draw(st.integers(0, 45)), len(data) - 1)
        else:
            at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


def check_decode(data: bytes) -> None:
    try:
        im = decode(data, SIZE)
    except ImageError as e:
        assert str(e), "an ImageError must say why"
        return
    assert im.size == (SIZE, SIZE) and im.mode == "L"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_decode_random_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(prefix=st.sampled_from([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]),
       rest=st.binary(max_size=2048))
def test_decode_random_bytes_behind_real_magic(prefix: bytes, rest: bytes) -> None:
    check_decode(prefix + rest)


def test_decode_mutated_real_images(seeds: list[bytes]) -> None:
    @FUZZ
    @given(data=mutated(seeds))
    def run(data: bytes) -> None:
        check_decode(data)

    run()


# ---------------------------------------------------------------- the zip ingest


@pytest.fixture(scope="module")
def zip_seeds(seeds: Seeds) -> Seeds:
    """Zips as uploads bring them: real images deflated or stored, folders, junk, a tiny PNG."""
    tiny = encode(Image.new("L", (2, 2), 9), "PNG")
    return Seeds([
        make_zip([("study/a.jpg", seeds[0]), ("study/b.png", seeds[2]), ("tiny.png", tiny)]),
        make_zip([("x/", b""), ("x/t.png", tiny), ("__MACOSX/x/._t.png", b"junk"), ("y.png", tiny)],
                 zipfile.ZIP_STORED),
        make_zip([("one.png", tiny)]),
    ])


def files_outside(root: Path, storage: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(storage)}


def test_zip_ingest_mutated_archives(zip_seeds: Seeds, tmp_path: Path) -> None:
    # Low caps: whatever a mutated header claims, an example never writes much.
    config: Settings = dataclasses.replace(
        get_settings({"FRACTURE_HOME": str(tmp_path / "home")}), max_zip_total_bytes=64 << 20,
        max_files_per_job=50, max_zip_members=50,
    )
    storage = Storage(config.storage_dir)
    before = files_outside(tmp_path, config.storage_dir)
    outcomes: dict[str, int] = {}

    @FUZZ
    @given(data=mutated(zip_seeds), name=st.sampled_from(["upload.zip", "scans.ZIP", "noext"]))
    def run(data: bytes, name: str) -> None:
        job_id = uuid.uuid4().hex
        part = FileStorage(io.BytesIO(data), filename=name)
        try:
            upload = ingest_parts([part], storage, config, job_id)
        except UploadRefused as refused:
            assert 400 <= refused.status < 500 and refused.message
            assert not (config.storage_dir / "uploads" / job_id).exists()
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            return
        assert isinstance(upload, Upload)
        stored = {e.storage_key for e in upload.entries if e.storage_key}
        on_disk = {p.relative_to(config.storage_dir).as_posix()
                   for p in (config.storage_dir / "uploads" / job_id).glob("*")}
        assert on_disk == stored, "every stored file has its entry and nothing else was left (no .part files)"
        assert all(e.ingest_error for e in upload.entries if not e.storage_key)
        kind = "with error rows" if any(e.ingest_error for e in upload.entries) else "clean"
        outcomes[kind] = outcomes.get(kind, 0) + 1

    run()
    assert files_outside(tmp_path, config.storage_dir) == before
    # The mutations reach both sides: archives still read cleanly, and damage reported as error rows.
    assert outcomes.get("clean", 0) > 0 and outcomes.get("with error rows", 0) > 0
