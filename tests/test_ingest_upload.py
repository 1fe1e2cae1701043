"""Upload safety: bad input gets a clear 4xx or an error row, zips are read safely, refusals store nothing."""

from __future__ import annotations

import dataclasses
import stat
import zipfile
from pathlib import Path

import pytest
from bad_files import make_zip
from flask.testing import FlaskClient
from sqlalchemy import select
from web_client import make_client, multipart, post_files

from fracture.archive import clean_path, is_junk, sniff, unsafe_member
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.migrate import upgrade
from fracture.models import Image, Job


def stored_files(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.storage_dir / "uploads").rglob("*") if p.is_file())


def rows_of(settings: Settings, job_id: str) -> list[Image]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.seq)))


def job_count(settings: Settings) -> int:
    with session_scope(settings.database_url) as session:
        return len(session.scalars(select(Job.id)).all())


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("xrays/hand/a.jpg", "xrays/hand/a.jpg"),
        ("C:\\Users\\me\\x.png", "Users/me/x.png"),
        ("/etc/passwd", "etc/passwd"),
        ("../../a\x00b\x1b.jpg", "ab.jpg"),
        ("a/./b//c.jpg", "a/b/c.jpg"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("", "unnamed"),
    ],
)
def test_clean_path_is_display_safe(raw: str, shown: str) -> None:
    assert clean_path(raw) == shown


def test_unsafe_members_and_junk() -> None:
    assert unsafe_member("../x.png") and unsafe_member("a/../../x.png") and unsafe_member("/abs.png")
    assert unsafe_member("C:/x.png") and unsafe_member("..\\x.png")
    assert unsafe_member("folder/x.png") is None
    assert is_junk("__MACOSX/a/._x.jpg") and is_junk("a/.DS_Store") and is_junk("Thumbs.db")
    assert not is_junk("a/x.jpg")


def test_sniff_reads_bytes_not_extensions(jpeg: bytes) -> None:
    assert sniff(jpeg[:16]) == "image"
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == "image"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "image"
    assert sniff(make_zip([("a.txt", b"x")])[:16]) == "zip"
    assert sniff(b"hello world, text") is None


# ---------------------------------------------------------------- through the API


def test_empty_upload_is_refused(client: FlaskClient, settings: Settings) -> None:
    response = post_files(client, [(b"", "")])
    assert response.status_code == 400
    assert "no files" in response.get_json()["error"].lower() or "no images" in response.get_json()["error"].lower()
    assert job_count(settings) == 0 and stored_files(settings) == []


def test_non_image_file_becomes_an_error_row(client: FlaskClient, settings: Settings, jpeg: bytes) -> None:
    response = post_files(client, [(jpeg, "scan.jpg"), (b"%PDF-1.4 not an image", "report.jpg")])
    assert response.status_code == 201
    job_id = response.get_json()["id"]
    rows = rows_of(settings, job_id)
    assert [r.path for r in rows] == ["scan.jpg", "report.jpg"]
    assert rows[0].ingest_error is None and rows[0].storage_key
    assert rows[1].ingest_error == "not an image: unrecognised file format" and rows[1].storage_key is None
    results = client.get(f"/api/jobs/{job_id}/results").get_json()["results"]
    assert results[1]["error"] == "not an image: unrecognised file format"


def test_only_non_images_is_a_clear_400(client: FlaskClient, settings: Settings) -> None:
    response = post_files(client, [(b"just text", "notes.txt")])
    assert response.status_code == 400
    assert "notes.txt: not an image" in response.get_json()["error"]
    assert job_count(settings) == 0


def test_zip_with_no_images_is_refused(client: FlaskClient, settings: Settings) -> None:
    junk = make_zip([("__MACOSX/._a.jpg", b"x"), ("pics/.DS_Store", b"x"), ("pics/", b""), ("Thumbs.db", b"x")])
    response = post_files(client, [(junk, "pics.zip")])
    assert response.status_code == 400
    assert "no images" in response.get_json()["error"]
    text_only = make_zip([("readme.txt", b"hello"), ("data.csv", b"a,b")])
    response = post_files(client, [(text_only, "docs.zip")])
    assert response.status_code == 400 and "readme.txt: not an image" in response.get_json()["error"]
    assert job_count(settings) == 0 and stored_files(settings) == []


def test_zip_members_keep_their_paths_and_junk_is_skipped(client: FlaskClient, settings: Settings, jpeg: bytes) -> None:
    archive = make_zip([("study/", b""), ("study/a/1.jpg", jpeg), ("__MACOSX/study/._1.jpg", b"x"),
                        ("study/.DS_Store", b"x"), ("study/b/2.png.jpg", jpeg)])
    response = post_files(client, [(archive, "study.zip"), (jpeg, "loose.jpg")])
    assert response.status_code == 201 and response.get_json()["total"] == 3
    rows = rows_of(settings, response.get_json()["id"])
    assert [(r.seq, r.path) for r in rows] == [(1, "study/a/1.jpg"), (2, "study/b/2.png.jpg"), (3, "loose.jpg")]
    assert all((settings.storage_dir / r.storage_key).read_bytes() == jpeg for r in rows if r.storage_key)


def test_zip_slip_members_are_refused_and_nothing_leaves_storage(
    client: FlaskClient, settings: Settings, jpeg: bytes, tmp_path: Path
) -> None:
    link = zipfile.ZipInfo("pics/link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip([
        ("../../evil.jpg", jpeg), ("/tmp/abs-evil.jpg", jpeg), ("pics/ok.jpg", jpeg), (link, b"/etc/passwd"),
        ("pics/inner.zip", make_zip([("x.jpg", jpeg)])),
    ])
    response = post_files(client, [(archive, "slip.zip")])
    assert response.status_code == 201
    rows = {r.path: r for r in rows_of(settings, response.get_json()["id"])}
    assert rows["evil.jpg"].ingest_error == "refused: path leaves the archive ('..')"
    assert rows["tmp/abs-evil.jpg"].ingest_error == "refused: absolute path in archive"
    assert rows["pics/link.jpg"].ingest_error == "refused: symbolic link in archive"
    assert rows["pics/inner.zip"].ingest_error == "refused: nested archives are not opened"
    assert rows["pics/ok.jpg"].ingest_error is None
    assert len(stored_files(settings)) == 1
    assert not Path("/tmp/abs-evil.jpg").exists()
    assert not any(p.name.endswith("evil.jpg") for p in tmp_path.parent.rglob("*"))


def test_encrypted_and_corrupt_zips_get_clear_errors(client: FlaskClient, settings: Settings, jpeg: bytes) -> None:
    encrypted = bytearray(make_zip([("secret.jpg", jpeg)], zipfile.ZIP_STORED))
    # Set the "encrypted" bit in the local header and the central directory, as a password-protected zip has.
    encrypted[6] |= 1
    central = encrypted.rfind(b"PK\x01\x02")
    encrypted[central + 8] |= 1
    corrupt = make_zip([("a.jpg", jpeg)])[:200]
    response = post_files(client, [(bytes(encrypted), "locked.zip"), (corrupt, "broken.zip"), (jpeg, "ok.jpg")])
    assert response.status_code == 201
    rows = rows_of(settings, response.get_json()["id"])
    assert rows[0].path == "secret.jpg" and "encrypted" in (rows[0].ingest_error or "")
    assert rows[1].path == "broken.zip" and "damaged or unreadable zip archive (" in (rows[1].ingest_error or "")
    assert rows[2].ingest_error is None


def test_zip_bomb_member_is_stopped_while_reading(fracture_env: dict[str, str], jpeg: bytes) -> None:
    settings = dataclasses.replace(get_settings(fracture_env), max_zip_ratio=50)
    client = make_client(settings)
    bomb = make_zip([("bomb.jpg", b"\xff\xd8\xff" + b"\0" * (8 << 20)), ("ok.jpg", jpeg)])
    response = post_files(client, [(bomb, "b.zip")])
    assert response.status_code == 201
    rows = rows_of(settings, response.get_json()["id"])
    assert rows[0].ingest_error == "refused: compression ratio above 50:1"
    assert len(stored_files(settings)) == 1

    capped = dataclasses.replace(settings, max_zip_total_bytes=4 << 20, max_zip_ratio=10_000)
    response = post_files(make_client(capped), [(bomb, "b.zip")])
    assert response.status_code == 413 and "expand to more than" in response.get_json()["error"]
    assert len(stored_files(settings)) == 1  # the refused upload left nothing behind
    dispose_engines()


def test_too_many_files_is_refused_with_nothing_stored(fracture_env: dict[str, str], jpeg: bytes) -> None:
    settings = dataclasses.replace(get_settings(fracture_env), max_files_per_job=3)
    client = make_client(settings)
    response = post_files(client, [(jpeg, f"{n}.jpg") for n in range(4)])
    assert response.status_code == 413
    assert "at most 3 files" in response.get_json()["error"]
    assert job_count(settings) == 0 and stored_files(settings) == []
    dispose_engines()


def test_over_max_content_length_is_413(settings: Settings, jpeg: bytes) -> None:
    client = make_client(settings, MAX_CONTENT_LENGTH=len(jpeg) // 2)
    response = post_files(client, [(jpeg, "big.jpg")])
    assert response.status_code == 413
    assert "too large" in response.get_json()["error"]
    body, content_type = multipart([(jpeg, "big.jpg")])
    page = client.post("/", data=body, content_type=content_type)  # the page route only knows GET
    assert page.status_code in (405, 413)
    assert job_count(settings) == 0
    dispose_engines()


def test_too_many_form_parts_is_413(settings: Settings, jpeg: bytes) -> None:
    client = make_client(settings, MAX_FORM_PARTS=2)
    response = post_files(client, [(jpeg, f"{n}.jpg") for n in range(3)])
    assert response.status_code == 413
    assert "Too many files in one request" in response.get_json()["error"]
    assert job_count(settings) == 0
    dispose_engines()


def test_no_model_registered_refuses_plainly(tmp_path: Path, jpeg: bytes) -> None:
    settings = dataclasses.replace(get_settings({"FRACTURE_HOME": str(tmp_path / "fresh")}), seed_model=None)
    upgrade(settings.database_url)
    client = make_client(settings)
    response = post_files(client, [(jpeg, "a.jpg")])
    assert response.status_code == 409
    assert "no trained model is registered yet" in response.get_json()["error"].lower()
    assert stored_files(settings) == []
    page = client.get("/")
    assert b"No trained model is registered yet" in page.data
    assert b'id="submit" disabled' in page.data
    dispose_engines()


# ---------------------------------------------------------------- what a job is called


def _job_name(client: FlaskClient, files: list[tuple[bytes, str]]) -> str:
    response = post_files(client, files)
    assert response.status_code == 201, response.get_json()
    name: str = client.get(f"/api/jobs/{response.get_json()['id']}").get_json()["name"]
    return name


def test_a_job_is_named_after_the_upload_not_a_folder_inside_it(client: FlaskClient, jpeg: bytes) -> None:
    # Issue 20 point 6: xrays40.zip with fractured/ and not fractured/ was named "fractured (4 files)".
    archive = make_zip([("fractured/a.jpg", jpeg), ("fractured/b.jpg", jpeg),
                        ("not fractured/c.jpg", jpeg), ("not fractured/d.jpg", jpeg)])
    assert _job_name(client, [(archive, "xrays40.zip")]) == "xrays40 (4 files)"
    # A folder from the folder picker: its files arrive as "<folder>/<sub>/<file>"; the folder names the job.
    folder = [(jpeg, "ward 3/fractured/a.jpg"), (jpeg, "ward 3/not fractured/b.jpg")]
    assert _job_name(client, folder) == "ward 3 (2 files)"
    assert _job_name(client, [(jpeg, "scan.jpg")]) == "scan.jpg"
    assert _job_name(client, [(archive, "Study.ZIP"), (jpeg, "loose.jpg")]) == "Study and 1 more (5 files)"


def test_a_damaged_zip_is_called_one(client: FlaskClient, settings: Settings, jpeg: bytes) -> None:
    # Cut from the front (no "PK" signature left) or from the back (no central directory): both say what it is.
    whole = make_zip([("a.jpg", jpeg)])
    for broken in (whole[100:], whole[:200]):
        response = post_files(client, [(broken, "xrays.zip")])
        assert response.status_code == 400
        error = response.get_json()["error"]
        assert "xrays.zip: damaged or unreadable zip archive" in error and "not an image" not in error, error
    assert job_count(settings) == 0
