"""Enumerate the images named on the command line: files, folders (recursively) and zips, read safely."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fracture.archive import (
    NESTED_ARCHIVE,
    ZIP_ERRORS,
    Bomb,
    Guarded,
    corrupt_member,
    is_junk,
    member_refusal,
    not_an_image,
    over_budget,
    sniff,
    unreadable_archive,
)
from fracture.config import Settings
from fracture.storage import TooLarge


@dataclass(frozen=True)
class Item:
    """One input: a display name and where its bytes are (a file, or a member of a zip), or why it has none."""

    name: str
    path: Path | None = None
    archive: Path | None = None
    member: zipfile.ZipInfo | None = None
    error: str | None = None


def _zip_items(archive: Path, display: str, settings: Settings) -> Iterator[Item]:
    try:
        # No member holds more compressed bytes than the archive: a header claiming more hides a bomb's ratio.
        size = archive.stat().st_size
        zf = zipfile.ZipFile(archive)
    except ZIP_ERRORS as e:
        yield Item(display, error=unreadable_archive(e))
        return
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir() and not is_junk(i.orig_filename)]
        if len(members) > settings.max_zip_members:
            yield Item(display, error=f"zip has {len(members)} files (limit {settings.max_zip_members})")
            return
        for info in members:
            name = f"{display}/{info.filename}"
            reason = member_refusal(info, min(info.compress_size, size), settings.max_zip_ratio)
            yield Item(name, error=reason) if reason else Item(name, archive=archive, member=info)


def _file_items(f: Path, display: str, settings: Settings) -> Iterator[Item]:
    """One loose file, told apart by its first bytes (never its extension): an image, a zip, or an error row."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        yield Item(display, error=f"could not read file: {e}")
        return
    kind = sniff(head)
    if kind == "zip" or (not head and f.suffix.lower() == ".zip"):
        yield from _zip_items(f, display, settings)
    elif kind is None:
        yield Item(display, error=not_an_image(head))
    else:
        yield Item(display, path=f)


def collect(paths: list[Path], settings: Settings) -> list[Item]:
    """Every input under `paths` in a stable order; zips are listed, not extracted."""
    items: list[Item] = []
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            display = str(f.relative_to(root.parent)) if root.is_dir() else str(f)
            if is_junk(f.as_posix()):
                continue
            if not f.exists():
                items.append(Item(display, error="file not found"))
            else:
                items.extend(_file_items(f, display, settings))
    return items


class ZipBudget:
    """Reads zip members while counting real uncompressed bytes (headers can lie) against caps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.left = settings.max_zip_total_bytes
        self._open: dict[Path, zipfile.ZipFile] = {}

    def read(self, item: Item, chunk: int = 1 << 20) -> bytes | str:
        """The member's bytes when they are an image, or the reason they were not read."""
        assert item.archive is not None and item.member is not None
        # No member holds more compressed bytes than its archive, whatever its header claims.
        compressed = min(item.member.compress_size, item.archive.stat().st_size)
        guarded: Guarded | None = None
        try:
            zf = self._open.get(item.archive)
            if zf is None:
                zf = self._open[item.archive] = zipfile.ZipFile(item.archive)
            with zf.open(item.member) as src:
                reader = guarded = Guarded(src, compressed, self.settings.max_zip_ratio, self.left)
                head = reader.read(16)
                kind = sniff(head)
                if kind != "image":
                    return NESTED_ARCHIVE if kind == "zip" else not_an_image(head)
                return head + b"".join(iter(lambda: reader.read(chunk), b""))
        except TooLarge:
            return over_budget(self.settings.max_zip_total_bytes)
        except Bomb as e:
            return str(e)
        except ZIP_ERRORS as e:
            return corrupt_member(e)
        finally:
            # What a refused member expanded to before it was stopped counts against the total too.
            self.left -= guarded.count if guarded is not None else 0

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()
