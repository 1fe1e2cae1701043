"""The command line's input reader (`fracture.inputs`): hostile zip members refused by the web upload's rules, with
the same reasons, and loose files told apart by their bytes, not their names."""

from __future__ import annotations

import dataclasses
import stat
import zipfile
from pathlib import Path

from bad_files import make_zip, patch_member

from fracture.config import Settings
from fracture.inputs import ZipBudget, collect


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
    ]), "crc.jpg", crc=0).replace(b"NUL.jpg", b"N\0L.jpg"))  # shown cleaned: "NL.jpg"
    budget = ZipBudget(settings)
    got = {}
    for item in collect([archive], settings):
        data = item.error or (budget.read(item) if item.member else "no member")
        got[item.name.rsplit("/", 1)[-1]] = data if isinstance(data, str) else len(data)
    budget.close()
    assert got["up.jpg"] == "refused: path leaves the archive ('..')"
    assert got["abs.jpg"] == got["win.jpg"] == "refused: absolute path in archive"
    assert got["inner.bin"] == "refused: nested archives are not opened"  # known by its bytes, not its name
    assert got["bomb.jpg"] == "refused: compression ratio above 200:1"
    assert got["crc.jpg"].startswith("corrupt archive member (") and "Bad CRC-32" in got["crc.jpg"]
    assert got["NL.jpg"] == "refused: the name contains a NUL character"
    assert got["link.jpg"] == "refused: symbolic link in archive"
    assert got["notes.jpg"] == "not an image: unrecognised file format"
    assert got["ok.jpg"] == len(jpeg)
    assert "._fork.jpg" not in got and len(got) == 10

    # Real bytes are counted against the total, whatever the headers say.
    small = dataclasses.replace(settings, max_zip_total_bytes=len(jpeg) + 10)
    budget = ZipBudget(small)
    single = tmp_path / "one.zip"
    single.write_bytes(make_zip([("ok.jpg", jpeg)]))  # declared within the total: only real bytes exceed it
    ok = next(i for i in collect([single], small) if i.name.endswith("/ok.jpg"))
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
    assert (got["in/broken.zip"].error or "").startswith("damaged or unreadable zip archive (")


def test_cli_refuses_a_whole_archive_by_its_headers_as_the_web_does(
    settings: Settings, jpeg: bytes, tmp_path: Path
) -> None:
    """Too many entries, or more bytes declared than the total allows: one error row for the zip, nothing read."""
    archive = tmp_path / "many.zip"
    archive.write_bytes(make_zip([(f"{i}.jpg", jpeg) for i in range(4)]))
    few = dataclasses.replace(settings, max_zip_members=3)
    assert [(i.name, i.error) for i in collect([archive], few)] == [
        (str(archive), "the archive has 4 entries, more than the limit of 3")
    ]
    small = dataclasses.replace(settings, max_zip_total_bytes=len(jpeg) * 3)
    [item] = collect([archive], small)
    assert item.member is None and (item.error or "").startswith(f"the archive declares {len(jpeg) * 4} bytes")
