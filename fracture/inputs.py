"""Enumerate the images named on the command line: files, folders (recursively) and zips, read safely."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fracture.config import Settings

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
# What zipfile raises on a damaged archive or member (a bad version, a header offset before the file's start...).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError, struct.error)


@dataclass(frozen=True)
class Item:
    """One input: a display name and where its bytes are (a file, or a member of a zip), or why it has none."""

    name: str
    path: Path | None = None
    archive: Path | None = None
    member: zipfile.ZipInfo | None = None
    error: str | None = None


def _junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" for p in parts) or (bool(parts) and parts[-1].lower() in JUNK_NAMES)


def _unsafe(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in zip"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in zip path"
    return None


def _zip_items(archive: Path, display: str, settings: Settings) -> Iterator[Item]:
    try:
        zf = zipfile.ZipFile(archive)
    except _ZIP_ERRORS as e:
        yield Item(display, error=f"not a readable zip: {e}")
        return
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir() and not _junk(i.filename)]
        if len(members) > settings.max_zip_members:
            yield Item(display, error=f"zip has {len(members)} files (limit {settings.max_zip_members})")
            return
        for info in members:
            name = f"{display}/{info.filename}"
            mode = info.external_attr >> 16
            reason = _unsafe(info.filename)
            if reason is None and stat.S_ISLNK(mode):
                reason = "symbolic link in zip"
            if reason is None and info.filename.lower().endswith(".zip"):
                reason = "nested zip not opened"
            yield Item(name, error=reason) if reason else Item(name, archive=archive, member=info)


def collect(paths: list[Path], settings: Settings) -> list[Item]:
    """Every input under `paths` in a stable order; zips are listed, not extracted."""
    items: list[Item] = []
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            display = str(f.relative_to(root.parent)) if root.is_dir() else str(f)
            if _junk(f.as_posix()):
                continue
            if not f.exists():
                items.append(Item(display, error="file not found"))
            elif f.suffix.lower() == ".zip" or zipfile.is_zipfile(f):
                items.extend(_zip_items(f, display, settings))
            else:
                items.append(Item(display, path=f))
    return items


class ZipBudget:
    """Reads zip members while counting real uncompressed bytes (headers can lie) against caps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.left = settings.max_zip_total_bytes
        self._open: dict[Path, zipfile.ZipFile] = {}

    def read(self, item: Item) -> bytes | str:
        """The member's bytes, or the reason they were not read."""
        assert item.archive is not None and item.member is not None
        zf = self._open.get(item.archive)
        if zf is None:
            zf = self._open[item.archive] = zipfile.ZipFile(item.archive)
        # Never more than the total budget nor than the compression ratio allows for this member; no member holds
        # more compressed bytes than its archive, whatever its header claims.
        compressed = min(item.member.compress_size, item.archive.stat().st_size)
        limit = min(self.left, max(1 << 20, compressed * self.settings.max_zip_ratio))
        try:
            with zf.open(item.member) as src:
                data = src.read(limit + 1)
        except (*_ZIP_ERRORS, RuntimeError) as e:  # RuntimeError: an encrypted member
            return f"could not read zip member: {e}"
        if len(data) > limit:
            return "zip member too large or too compressed (zip bomb?)"
        self.left -= len(data)
        return data

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()
