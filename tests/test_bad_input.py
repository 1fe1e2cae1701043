"""Bad input, each case a real file built here: a clear 4xx with nothing stored, or error rows beside classified ones.

The decoding runs for real: the worker's chunk function classifies the stored files in-process, so "an error row
with a reason" is checked on real Result rows. Cases already covered in test_ingest_upload.py (plain zip slip,
symlink and nested members, a flag-encrypted and a truncated zip, a ratio bomb, junk-only zips, too many loose
files, Content-Length over the limit, a part without a file) are not repeated here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from bad_files import (
    bomb_png,
    dataset_file,
    encode,
    encrypted_zip,
    exif_rotated_jpeg,
    gray16_png,
    halves,
    make_zip,
    overlapping_bomb,
    patch_member,
)
from harness import LiveSystem, wait_for
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client, multipart, post_files
from werkzeug.test import TestResponse

from fracture.config import Settings
from fracture.db import dispose_engines, session_scope
from fracture.inputs import ZipBudget, collect
from fracture.models import Image, Job, JobStatus, Result
from fracture.preprocess import ImageError, decode
from worker.classify import _predictors, classify_chunk

LABELS = ("fractured", "not fractured")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def xray(sample_images: list[Path]) -> PILImage.Image:
    """A real X-ray of the dataset, as 8-bit grayscale."""
    path = next(p for p in sample_images if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n")
    with PILImage.open(path) as im:
        return im.convert("L")


@pytest.fixture(scope="module")
def jpeg(sample_images: list[Path]) -> bytes:
    return next(p.read_bytes() for p in sample_images if p.read_bytes()[:3] == b"\xff\xd8\xff")


@pytest.fixture(scope="module")
def truncated_jpeg(dataset_root: Path) -> bytes:
    """`not fractured/IMG0004134.jpg` of the dataset: a real JPEG cut short."""
    data = dataset_file(dataset_root, "not fractured", "IMG0004134.jpg").read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and not data.rstrip(b"\0").endswith(b"\xff\xd9")
    return data


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def written_outside_storage(before: set[Path], root: Path, settings: Settings) -> set[Path]:
    """New files under `root` that are neither in storage nor the installation's own state (database, broker)."""
    home = settings.storage_dir.parent
    return {p for p in files_under(root) - before if not p.is_relative_to(settings.storage_dir) and p.parent != home}


def stored_files(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.storage_dir / "uploads").rglob("*") if p.is_file())


def job_count(settings: Settings) -> int:
    with session_scope(settings.database_url) as session:
        return len(session.scalars(select(Job.id)).all())


def run_worker(settings: Settings, job_id: str) -> dict[str, tuple[str | None, str | None]]:
    """Classify every image of the job with the worker's own chunk function; {path: (prediction, error)}."""
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.seq)))
    classify_chunk(settings, job_id, ids)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status in JobStatus.FINAL, "the job must reach a final state"
        assert job.processed == job.total == len(ids)
        rows = session.execute(
            select(Image.path, Result.prediction, Result.error).join(Result, Result.image_id == Image.id)
            .where(Image.job_id == job_id)
        ).all()
    assert len(rows) == len(ids), "one result per image"
    outcome = {path: (prediction, error) for path, prediction, error in rows}
    for path, (prediction, error) in outcome.items():
        assert (prediction in LABELS) != bool(error), f"{path}: a row is either classified or has a reason"
    return outcome


def classified(outcome: dict[str, tuple[str | None, str | None]], path: str) -> bool:
    return outcome[path][0] in LABELS and outcome[path][1] is None


def error_of(outcome: dict[str, tuple[str | None, str | None]], path: str) -> str:
    error = outcome[path][1]
    assert error, f"{path} should carry an error"
    return error


# ---------------------------------------------------------------- names


def test_hostile_names_are_refused_or_kept_for_display_only(
    settings: Settings, jpeg: bytes, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex[:8]
    link = zipfile.ZipInfo(f"scans/link-{marker}.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    long_name = "scans/" + "x" * 496 + ".jpg"  # 500 characters
    archive = make_zip([
        (f"a/../../escape-{marker}.jpg", jpeg),
        (f"..\\..\\back-{marker}.jpg", jpeg),
        (f"/tmp/abs-{marker}.jpg", jpeg),
        (f"C:\\Windows\\Temp\\drive-{marker}.jpg", jpeg),
        (f"C:drive-relative-{marker}.jpg", jpeg),
        (f"\\\\server\\share\\unc-{marker}.jpg", jpeg),
        ("x/..", jpeg),
        (link, b"/etc/passwd"),
        (f"scans/NUL{marker}.jpg", jpeg),  # its name gets a NUL byte below
        ("scans\\windows\\ok.jpg", jpeg),
        ("scans/Röntgen 骨折 🦴.jpg", jpeg),
        ("scans/ left  hand .jpg", jpeg),
        (long_name, jpeg),
    ])
    archive = archive.replace(f"NUL{marker}".encode(), f"N\0L{marker}".encode())
    loose = [
        ("Röntgen 骨折 🦴.jpg", "Röntgen 骨折 🦴.jpg"),
        ("my scan 01 .jpg", "my scan 01 .jpg"),
        ("a\x00b.jpg", "ab.jpg"),
        ("..", "unnamed"),
        (f"../../../etc/loose-{marker}.jpg", f"etc/loose-{marker}.jpg"),
        (f"C:/Users/me/win-{marker}.jpg", f"Users/me/win-{marker}.jpg"),
        # werkzeug reads a backslash in a quoted multipart file name as an escape: "D:scansb-…" is what arrives.
        (f"D:\\scans\\b-{marker}.jpg", f"scansb-{marker}.jpg"),
        ("骨" * 500, "骨" * 500),
    ]
    before = files_under(tmp_path)
    response = post_files(make_client(settings), [(archive, "names.zip")] + [(jpeg, raw) for raw, _ in loose])
    assert response.status_code == 201, response.get_json()
    outcome = run_worker(settings, response.get_json()["id"])

    refused = {
        f"a/escape-{marker}.jpg": "path leaves the archive",
        f"back-{marker}.jpg": "path leaves the archive",
        f"tmp/abs-{marker}.jpg": "absolute path",
        f"Windows/Temp/drive-{marker}.jpg": "absolute path",
        f"drive-relative-{marker}.jpg": "absolute path",
        f"server/share/unc-{marker}.jpg": "absolute path",
        "x": "path leaves the archive",
        f"scans/link-{marker}.jpg": "symbolic link",
        f"scans/NL{marker}.jpg": "the name contains a NUL character",
    }
    for path, reason in refused.items():
        assert reason in error_of(outcome, path), path
    kept = ["scans/windows/ok.jpg", "scans/Röntgen 骨折 🦴.jpg", "scans/left  hand .jpg", long_name]
    kept += [shown for _, shown in loose]
    for path in kept:
        assert classified(outcome, path), path
    assert len(outcome) == len(refused) + len(kept)

    assert written_outside_storage(before, tmp_path, settings) == set()
    assert not list(Path("/tmp").glob(f"*{marker}*")) and not list(tmp_path.parent.parent.rglob(f"*{marker}*"))
    assert len(stored_files(settings)) == len(kept)
    dispose_engines()


# ---------------------------------------------------------------- images


def test_each_broken_image_is_an_error_row_and_the_rest_are_classified(
    settings: Settings, xray: PILImage.Image, jpeg: bytes, truncated_jpeg: bytes, tmp_path: Path
) -> None:
    flat = PILImage.new("L", (10000, 10000), 128)
    files = {
        "real.jpg": jpeg,
        "xray.gif": encode(xray, "GIF"),
        "xray.bmp": encode(xray, "BMP"),
        "xray.tiff": encode(xray, "TIFF", compression="tiff_lzw"),
        "gray16.png": gray16_png(),
        "cmyk.jpg": encode(xray.convert("CMYK"), "JPEG"),
        "rotated.jpg": exif_rotated_jpeg(),
        "one-pixel.png": encode(PILImage.new("L", (1, 1), 200), "PNG"),
        "one-pixel.jpg": encode(PILImage.new("RGB", (1, 1), (9, 9, 9)), "JPEG"),
        "IMG0004134.jpg": truncated_jpeg,
        "bomb.png": bomb_png(12000, 12000),
        "flat-10000.png": encode(flat, "PNG", compress_level=9),
        "flat-10000.jpg": encode(flat, "JPEG", quality=50),
        "text.jpg": b"\xff\xd8\xff\xe0 these are notes, not a picture",
    }
    assert len(files["bomb.png"]) < 200_000 and len(files["flat-10000.png"]) < 200_000  # small files, huge images
    before = files_under(tmp_path)
    response = post_files(make_client(settings), [(data, name) for name, data in files.items()])
    assert response.status_code == 201, response.get_json()
    job_id = response.get_json()["id"]
    started = time.monotonic()
    outcome = run_worker(settings, job_id)
    assert time.monotonic() - started < 60

    assert "image file is truncated" in error_of(outcome, "IMG0004134.jpg")
    assert error_of(outcome, "bomb.png").startswith("image too large: 12000x12000 pixels")
    assert error_of(outcome, "flat-10000.png").startswith("image too large: 10000x10000 pixels")
    assert error_of(outcome, "flat-10000.jpg").startswith("image too large: 10000x10000 pixels")
    assert error_of(outcome, "text.jpg").startswith("could not decode image")
    broken = {"IMG0004134.jpg", "bomb.png", "flat-10000.png", "flat-10000.jpg", "text.jpg"}
    for name in files.keys() - broken:
        assert classified(outcome, name), name
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.failed) == (JobStatus.DONE, len(broken))
    assert written_outside_storage(before, tmp_path, settings) == set()
    dispose_engines()


def test_a_10000_pixel_square_is_classified_within_a_raised_limit(settings: Settings) -> None:
    flat = encode(PILImage.new("L", (10000, 10000), 128), "PNG", compress_level=9)
    raised = dataclasses.replace(settings, max_image_pixels=100_000_000)
    response = post_files(make_client(raised), [(flat, "flat.png")])
    assert response.status_code == 201
    _predictors.clear()  # the worker's model cache was built with the default limit by an earlier test
    try:
        outcome = run_worker(raised, response.get_json()["id"])
    finally:
        _predictors.clear()
    assert classified(outcome, "flat.png")
    dispose_engines()


_MEASURE = """
import json, resource, sys, time
from pathlib import Path
from fracture.preprocess import ImageError, decode
out = {}
for name in sys.argv[2:]:
    data = Path(sys.argv[1], name).read_bytes()
    for limit in (64_000_000, 120_000_000):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            result = "%dx%d" % decode(data, 128, max_pixels=limit).size
        except ImageError as e:
            result = str(e)
        out["%s@%d" % (name, limit)] = {"result": result, "seconds": time.perf_counter() - start,
            "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}
print(json.dumps(out))
"""


def test_huge_images_decode_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """10000x10000 and a 12000x12000 bomb: refused before decoding, or decoded in about a byte a pixel at most."""
    flat = PILImage.new("L", (10000, 10000), 128)
    (tmp_path / "flat.png").write_bytes(encode(flat, "PNG", compress_level=9))
    (tmp_path / "flat.jpg").write_bytes(encode(flat, "JPEG", quality=50))
    (tmp_path / "bomb.png").write_bytes(bomb_png(12000, 12000))
    del flat
    # A fresh process, so that its peak memory (ru_maxrss) is this decode's and no earlier test's.
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path), "flat.png", "flat.jpg", "bomb.png"],
                          capture_output=True, text=True, timeout=120, check=True)
    m = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("flat.png", "flat.jpg"):  # over the default limit: refused from the header alone
        refused = m[f"{name}@64000000"]
        assert refused["result"].startswith("image too large: 10000x10000 pixels, above the limit of 64000000")
        assert refused["seconds"] < 1 and refused["grew_mb"] < 20
    assert m["bomb.png@120000000"]["result"].startswith("image too large: 12000x12000")
    assert m["bomb.png@120000000"]["grew_mb"] < 20
    png, jpg = m["flat.png@120000000"], m["flat.jpg@120000000"]
    assert png["result"] == jpg["result"] == "128x128"
    assert png["seconds"] < 10 and png["grew_mb"] < 200  # 100 MB of pixels, decoded once
    assert jpg["seconds"] < 5 and jpg["grew_mb"] < 40  # libjpeg decodes at 1/8 scale (draft)


@pytest.mark.parametrize(("orientation", "top", "left"), [(1, "mixed", "dark"), (6, "dark", "mixed"),
                                                          (8, "bright", "mixed"), (3, "mixed", "bright")])
def test_exif_orientation_is_applied(orientation: int, top: str, left: str) -> None:
    """A 160x80 image, left half black: rotated by its EXIF tag, black lands on top (6), bottom (8) or right (3)."""
    a = np.asarray(decode(exif_rotated_jpeg(orientation), 64), dtype=np.float32)

    def shade(region: np.ndarray) -> str:
        mean = float(region.mean())
        return "dark" if mean < 60 else "bright" if mean > 195 else "mixed"

    assert (shade(a[:24]), shade(a[:, :24])) == (top, left)


def test_formats_decode_to_the_same_pixels(xray: PILImage.Image) -> None:
    reference = np.asarray(decode(encode(xray, "PNG"), 128), dtype=np.float32)
    for fmt, options in (("GIF", {}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"}), ("JPEG", {"quality": 95}),
                         ("WEBP", {"lossless": True})):
        decoded = np.asarray(decode(encode(xray, fmt, **options), 128), dtype=np.float32)
        assert np.abs(decoded - reference).mean() < 2.0, fmt


def test_cmyk_16_bit_and_one_pixel_images_keep_their_content(xray: PILImage.Image) -> None:
    white = np.asarray(decode(encode(PILImage.new("CMYK", (40, 30), (0, 0, 0, 0)), "JPEG"), 32))
    black = np.asarray(decode(encode(PILImage.new("CMYK", (40, 30), (0, 0, 0, 255)), "JPEG"), 32))
    assert white.mean() > 240 and black.mean() < 15  # not inverted
    from_cmyk = np.asarray(decode(encode(xray.convert("CMYK"), "JPEG", quality=95), 128), dtype=np.float32)
    assert np.abs(from_cmyk - np.asarray(decode(encode(xray, "PNG"), 128), dtype=np.float32)).mean() < 8

    ramp = np.asarray(decode(gray16_png(), 64))
    assert ramp.min() <= 5 and ramp.max() >= 250, "16-bit values are stretched to 8 bits, not clipped at 255"
    assert (np.diff(ramp.astype(int), axis=0) >= 0).all()  # the ramp runs top to bottom

    assert set(np.unique(np.asarray(decode(encode(PILImage.new("L", (1, 1), 200), "PNG"), 64)))) == {200}


def test_not_an_image_and_a_truncated_jpeg_raise_image_error(truncated_jpeg: bytes, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="image file is truncated"):
        decode(truncated_jpeg, 64)
    for data in (b"", b"hello", b"\x89PNG\r\n\x1a\n", halves((4, 4)).tobytes()):
        with pytest.raises(ImageError):
            decode(data, 64)
    (tmp_path / "notes.jpg").write_text("plain text named .jpg")
    with pytest.raises(ImageError, match="not an image"):
        decode(tmp_path / "notes.jpg", 64)


# ---------------------------------------------------------------- zip bombs and lying headers


def test_a_zip_bomb_with_a_huge_declared_total_is_refused_before_reading(settings: Settings, jpeg: bytes) -> None:
    bomb = overlapping_bomb(b"\xff\xd8\xff" + bytes(64 << 20), 200)  # 200 entries sharing one 64 MiB member
    assert len(bomb) < 200_000
    started = time.monotonic()
    response = post_files(make_client(settings), [(jpeg, "ok.jpg"), (bomb, "bomb.zip")])
    assert time.monotonic() - started < 10
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert "bomb.zip: the archive declares 13421773400 bytes uncompressed" in error and "8589934592" in error
    assert job_count(settings) == 0 and stored_files(settings) == []
    dispose_engines()


def test_bomb_members_and_lying_headers_are_error_rows(settings: Settings, jpeg: bytes) -> None:
    zeros = b"\xff\xd8\xff" + bytes(32 << 20)
    ratio_bomb = make_zip([("ratio.jpg", zeros), ("ok.jpg", jpeg)])
    # Headers that lie: a size too small (zipfile then stops early and the CRC fails), a compressed size as
    # large as the member (to pass for a 1:1 ratio), a size of nearly 4 GiB for a few bytes.
    understated = patch_member(make_zip([("small.jpg", zeros), ("ok.jpg", jpeg)]), "small.jpg", file_size=1000)
    plain = make_zip([("plain.jpg", zeros), ("ok.jpg", jpeg)])
    overstated = patch_member(plain, "plain.jpg", compress_size=len(zeros))
    huge = patch_member(make_zip([("huge.jpg", jpeg), ("ok.jpg", jpeg)]), "huge.jpg", file_size=0xFFFF_FFF0)
    crc = patch_member(make_zip([("crc.jpg", jpeg), ("ok.jpg", jpeg)]), "crc.jpg", crc=0)
    uploads = [(ratio_bomb, "ratio"), (understated, "small"), (overstated, "plain"), (huge, "huge"), (crc, "crc")]
    started = time.monotonic()
    response = post_files(make_client(settings), [(data, f"{name}.zip") for data, name in uploads])
    assert time.monotonic() - started < 20
    assert response.status_code == 201, response.get_json()
    outcome = run_worker(settings, response.get_json()["id"])
    assert error_of(outcome, "ratio.jpg") == "refused: compression ratio above 200:1"
    assert error_of(outcome, "plain.jpg") == "refused: compression ratio above 200:1"
    assert error_of(outcome, "huge.jpg") == "refused: compression ratio above 200:1"
    assert "Bad CRC-32" in error_of(outcome, "small.jpg") and "Bad CRC-32" in error_of(outcome, "crc.jpg")
    assert classified(outcome, "ok.jpg")
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(Image).where(Image.path == "ok.jpg")).all()
        assert len(rows) == 5 and all(r.size_bytes == len(jpeg) for r in rows)
    assert len(stored_files(settings)) == 5  # the five ok.jpg, nothing of the bombs
    dispose_engines()


def test_a_really_encrypted_zip_is_an_error_row(settings: Settings, jpeg: bytes, tmp_path: Path) -> None:
    archive = encrypted_zip("secret.jpg", jpeg, b"password")
    assert zipfile.ZipFile(io.BytesIO(archive)).read("secret.jpg", pwd=b"password") == jpeg  # really encrypted
    response = post_files(make_client(settings), [(archive, "locked.zip"), (jpeg, "ok.jpg")])
    assert response.status_code == 201, response.get_json()
    outcome = run_worker(settings, response.get_json()["id"])
    assert error_of(outcome, "secret.jpg") == "refused: encrypted archive members are not supported"
    assert classified(outcome, "ok.jpg")
    assert len(stored_files(settings)) == 1

    (tmp_path / "locked.zip").write_bytes(archive)
    [item] = collect([tmp_path / "locked.zip"], settings)  # the command line gives the same reason
    assert item.error == "refused: encrypted archive members are not supported" and item.member is None
    dispose_engines()


# ---------------------------------------------------------------- requests refused as a whole


def test_refused_requests_store_nothing(settings: Settings, jpeg: bytes, tmp_path: Path) -> None:
    client = make_client(settings)
    before = files_under(tmp_path)

    def refused(response: TestResponse, status: int, text: str) -> None:
        assert response.status_code == status, response.get_json()
        assert text in response.get_json()["error"]

    empty_zip = make_zip([])
    assert len(empty_zip) == 22  # just the end-of-directory record
    refused(post_files(client, [(empty_zip, "empty.zip")]), 400, "holds no files")
    refused(post_files(client, [(b"", "empty.jpg")]), 400, "empty.jpg: empty file")
    refused(client.post("/api/jobs"), 400, "No files in the upload")
    refused(client.post("/api/jobs", json={"files": ["a.jpg"]}), 400, "No files in the upload")
    refused(client.post("/api/jobs", data={"name": "no file here"}), 400, "No files in the upload")
    refused(client.post("/api/jobs", data=b"--b\r\ngarbage", content_type="multipart/form-data; boundary=b"),
            400, "No files in the upload")

    # More files than the per-job cap, counted inside a zip: the members stored so far are removed.
    capped = make_client(dataclasses.replace(settings, max_files_per_job=3))
    refused(post_files(capped, [(make_zip([(f"{n}.jpg", jpeg) for n in range(4)]), "four.zip")]), 413,
            "at most 3 files")

    # Over the size limit without a Content-Length (a chunked upload, as gunicorn passes it on).
    small = make_client(settings, MAX_CONTENT_LENGTH=len(jpeg) // 2)
    body, content_type = multipart([(jpeg, "big.jpg")])
    response = small.post("/api/jobs", input_stream=io.BytesIO(body), content_type=content_type,
                          headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    refused(response, 413, "The upload is too large")

    assert job_count(settings) == 0 and stored_files(settings) == []
    assert written_outside_storage(before, tmp_path, settings) == set()
    dispose_engines()


# ---------------------------------------------------------------- the command line's zip reader


def test_cli_zip_reader_refuses_the_same_members(settings: Settings, jpeg: bytes, tmp_path: Path) -> None:
    """`fracture classify` reads zips by the web upload's rules (fracture.archive) and gives the same reasons."""
    zeros = b"\xff\xd8\xff" + bytes(32 << 20)
    link = zipfile.ZipInfo("link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "in.zip"
    archive.write_bytes(patch_member(make_zip([
        ("../up.jpg", jpeg), ("/abs.jpg", jpeg), ("C:\\win.jpg", jpeg), ("inner.bin", make_zip([("x.jpg", jpeg)])),
        ("bomb.jpg", zeros), ("crc.jpg", jpeg), ("NUL.jpg", jpeg), (link, b"/etc/passwd"), ("notes.jpg", b"text"),
        ("._fork.jpg", jpeg), ("ok.jpg", jpeg),
    ]), "crc.jpg", crc=0).replace(b"NUL.jpg", b"N\0L.jpg"))  # zipfile cuts the name at the NUL: "N"
    budget = ZipBudget(settings)
    got = {}
    for item in collect([archive], settings):
        data = item.error or (budget.read(item) if item.member else "no member")
        got[item.name.rsplit("/", 1)[-1]] = data if isinstance(data, str) else len(data)
    budget.close()
    assert got["up.jpg"] == "refused: path leaves the archive ('..')"
    assert got["abs.jpg"] == got["C:\\win.jpg"] == "refused: absolute path in archive"
    assert got["inner.bin"] == "refused: nested archives are not opened"  # known by its bytes, not its name
    assert got["bomb.jpg"] == "refused: compression ratio above 200:1"
    assert got["crc.jpg"].startswith("corrupt archive member (") and "Bad CRC-32" in got["crc.jpg"]
    assert got["N"] == "refused: the name contains a NUL character"
    assert got["link.jpg"] == "refused: symbolic link in archive"
    assert got["notes.jpg"] == "not an image: unrecognised file format"
    assert got["ok.jpg"] == len(jpeg)
    assert "._fork.jpg" not in got and len(got) == 10

    # Real bytes are counted against the total, whatever the headers say.
    small = dataclasses.replace(settings, max_zip_total_bytes=len(jpeg) + 10)
    budget = ZipBudget(small)
    ok = next(i for i in collect([archive], small) if i.name.endswith("/ok.jpg"))
    assert budget.read(ok) == jpeg
    assert budget.read(ok) == f"the archives expand to more than {len(jpeg) + 10} bytes, the limit"
    budget.close()


def test_cli_tells_loose_files_apart_by_their_bytes(settings: Settings, jpeg: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "scan.txt").write_bytes(jpeg)
    (folder / "batch.dat").write_bytes(make_zip([("x.jpg", jpeg)]))
    (folder / "notes.jpg").write_bytes(b"not an x-ray")
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.zip").write_bytes(b"")
    (folder / "._scan.jpg").write_bytes(jpeg)
    got = {i.name: i for i in collect([folder], settings)}
    assert sorted(got) == ["in/batch.dat/x.jpg", "in/broken.zip", "in/empty.png", "in/notes.jpg", "in/scan.txt"]
    assert got["in/scan.txt"].path == folder / "scan.txt" and got["in/scan.txt"].error is None
    assert got["in/batch.dat/x.jpg"].member is not None
    assert got["in/notes.jpg"].error == "not an image: unrecognised file format"
    assert got["in/empty.png"].error == "empty file"
    assert (got["in/broken.zip"].error or "").startswith("not a readable zip archive (")


# ---------------------------------------------------------------- end to end


def test_hostile_upload_end_to_end(live_system: LiveSystem, jpeg: bytes, truncated_jpeg: bytes) -> None:
    """Web (gunicorn) + redis + a real worker: the job finishes, errors have reasons, every process stays up."""
    archive = make_zip([("../evil.jpg", jpeg), ("scans/ok.jpg", jpeg), ("scans/cut.jpg", truncated_jpeg),
                        ("scans/bomb.png", bomb_png(12000, 12000)), ("scans/inner.zip", make_zip([("x", jpeg)]))])
    files = [("files", ("hostile.zip", archive)), ("files", ("Röntgen 01.jpg", jpeg))]
    token = live_system.env.get("FRACTURE_TEST_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(f"{live_system.url}/api/jobs", files=files, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    def finished() -> dict[str, object] | None:
        job = requests.get(f"{live_system.url}/api/jobs/{job_id}", headers=headers, timeout=10).json()
        return job if job["status"] in JobStatus.FINAL else None

    job = wait_for(finished, 120, "the hostile job to finish")
    assert job["status"] == JobStatus.DONE  # type: ignore[index]
    results = requests.get(f"{live_system.url}/api/jobs/{job_id}/results", headers=headers, timeout=10).json()
    by_path = {r["path"]: r for r in results["results"]}
    assert set(by_path) == {"evil.jpg", "scans/ok.jpg", "scans/cut.jpg", "scans/bomb.png", "scans/inner.zip",
                            "Röntgen 01.jpg"}
    assert "path leaves the archive" in by_path["evil.jpg"]["error"]
    assert "image file is truncated" in by_path["scans/cut.jpg"]["error"]
    assert by_path["scans/bomb.png"]["error"].startswith("image too large: 12000x12000")
    assert "nested archives" in by_path["scans/inner.zip"]["error"]
    for path in ("scans/ok.jpg", "Röntgen 01.jpg"):
        assert by_path[path]["prediction"] in LABELS and not by_path[path]["error"]
    assert live_system.web.alive() and live_system.worker.alive(), live_system.logs()
