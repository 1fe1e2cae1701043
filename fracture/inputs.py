"""Enumerate the images named on the command line: files, folders (recursively) and zips, read safely."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fracture.archive import HEAD_BYTES, ArchiveRefused, Member, Refused, ZipReader, is_junk, not_an_image, sniff
from fracture.config import Settings


@dataclass(frozen=True)
class Item:
    """One input: a display name and where its bytes are (a file, or a member of a zip), or why it has none."""

    name: str
    path: Path | None = None
    archive: Path | None = None
    member: Member | None = None
    error: str | None = None


def zip_reader(settings: Settings) -> ZipReader:
    """The zip reader of one run, under the same caps as a web upload."""
    return ZipReader(settings.max_zip_members, settings.max_zip_total_bytes, settings.max_zip_ratio)


def _zip_items(archive: Path, display: str, reader: ZipReader) -> Iterator[Item]:
    try:
        zf, members, _skipped = reader.open(archive)
    except (Refused, ArchiveRefused) as e:
        yield Item(display, error=str(e))
        return
    with zf:
        for member in members:
            name = f"{display}/{member.path}"
            yield Item(name, error=member.refusal) if member.refusal else Item(name, archive=archive, member=member)


def _file_items(f: Path, display: str, reader: ZipReader) -> Iterator[Item]:
    """One loose file, told apart by its first bytes (never its extension): an image or DICOM file, a zip, or an
    error row."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as e:
        yield Item(display, error=f"could not read file: {e}")
        return
    kind = sniff(head, f.name)
    if kind == "zip" or (not head and f.suffix.lower() == ".zip"):
        yield from _zip_items(f, display, reader)
    elif kind is None:
        yield Item(display, error=not_an_image(head, f.name))
    else:
        yield Item(display, path=f)


def collect(paths: list[Path], settings: Settings, exclude: tuple[Path, ...] = ()) -> list[Item]:
    """Every input under `paths` in a stable order, files and folders in `exclude` left out; zips listed, not read."""
    skip = {p.resolve() for p in exclude}
    reader = zip_reader(settings)
    items: list[Item] = []
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            display = str(f.relative_to(root.parent)) if root.is_dir() else str(f)
            if is_junk(f.as_posix()) or _excluded(f, skip):
                continue
            if not f.exists():
                items.append(Item(display, error="file not found"))
            else:
                items.extend(_file_items(f, display, reader))
    return items


def _excluded(f: Path, skip: set[Path]) -> bool:
    if not skip:
        return False
    resolved = f.resolve()
    return resolved in skip or any(parent in skip for parent in resolved.parents)


class ZipBudget:
    """Reads zip members for `fracture classify` through one ZipReader, so every member counts against the caps."""

    def __init__(self, settings: Settings) -> None:
        self.reader = zip_reader(settings)
        self._open: dict[Path, zipfile.ZipFile] = {}

    def read(self, item: Item, chunk: int = 1 << 20) -> bytes | str:
        """The member's bytes when they are an image, or the reason they were not read."""
        assert item.archive is not None and item.member is not None
        try:
            zf = self._open.get(item.archive)
            if zf is None:
                zf = self._open[item.archive] = zipfile.ZipFile(item.archive)
            with self.reader.read(zf, item.member) as src:
                return b"".join(iter(lambda: src.read(chunk), b""))
        except (Refused, ArchiveRefused) as e:
            return str(e)

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()
