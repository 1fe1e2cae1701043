"""Bad uploads through the web's ingest, each case a real file built here: a clear 4xx with nothing stored, or
error rows beside classified ones.

The app runs in-process (the Flask test client) and so does the decoding: the worker's chunk function classifies
the stored files, so "an error row with a reason" is checked on real Result rows. Cases already covered in
test_ingest_upload.py (plain zip slip, symlink and nested members, a flag-encrypted and a truncated zip, a ratio
bomb, junk-only zips, too many loose files, Content-Length over the limit, a part without a file) are not repeated
here. The same files decoded directly: test_bad_input_decode.py; through a live system: test_bad_input_e2e.py.
"""

from __future__ import annotations

import dataclasses
import io
import stat
import time
import uuid
import zipfile
from pathlib import Path

from bad_files import (
    bomb_png,
    encode,
    encrypted_zip,
    exif_rotated_jpeg,
    gray16_png,
    make_zip,
    overlapping_bomb,
    patch_member,
)
from installation import LABELS
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client, multipart, post_files
from werkzeug.test import TestResponse

from fracture.config import Settings
from fracture.db import dispose_engines, session_scope
from fracture.inputs import collect
from fracture.models import FINAL_JOB_STATUSES, Image, Job, JobStatus, Result
from worker.classify import _predictors, classify_chunk

# ---------------------------------------------------------------- helpers


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
        assert job is not None and job.status in FINAL_JOB_STATUSES, "the job must reach a final state"
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
