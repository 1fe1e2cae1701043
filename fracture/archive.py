"""The rules for reading zip archives of images, shared by the web upload and `fracture classify`."""

from __future__ import annotations

import io
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fracture import dicom
from fracture.storage import TooLarge

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
# Below this size a high compression ratio is harmless (a blank test image); above it, a bomb.
RATIO_FLOOR_BYTES = 1 << 20
NESTED_ARCHIVE = "refused: nested archives are not opened"
# A file named .zip that cannot be read as one: damaged in transfer, cut short, or not a zip at all.
DAMAGED_ZIP = "damaged or unreadable zip archive"
# How many first bytes tell a file's kind (a DICOM file's preamble and "DICM" are the longest).
HEAD_BYTES = dicom.HEAD_BYTES
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")  # C:\x, C:/x and drive-relative C:x
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
# What zipfile raises on a damaged archive (found by fuzzing: a bad version is NotImplementedError, a header
# offset before the file's start a ValueError from seek); all mean "this archive or member is unreadable".
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError, struct.error)


class Bomb(Exception):
    """A member expanded past the compression ratio while being read; the message is the reason shown."""


def clean_path(name: str) -> str:
    """A display-safe relative path: no control characters, `/` separators, no leading `/`, `.` or `..`."""
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cc" and ch not in _BIDI)
    parts = [p.strip() for p in name.replace("\\", "/").split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    if parts and _DRIVE_PREFIX.match(parts[0]):
        parts[0] = parts[0][2:].strip()  # "C:" alone, or drive-relative "C:scan.jpg"
        parts = [p for p in parts if p]
    return "/".join(parts)[:1024] or "unnamed"


def is_junk(path: str) -> bool:
    """Operating-system litter that nobody means to classify (macOS resource forks, thumbnails)."""
    parts = path.replace("\\", "/").split("/")
    base = parts[-1].lower()
    return "__MACOSX" in parts or base in JUNK_NAMES or base.startswith("._")


def unsafe_member(name: str) -> str | None:
    """Why a zip member's name is unsafe to honour, or None when it is a plain relative path."""
    if "\x00" in name:
        return "refused: the name contains a NUL character"
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or _DRIVE_PREFIX.match(norm):
        return "refused: absolute path in archive"
    if ".." in parts:
        return "refused: path leaves the archive ('..')"
    return None


def member_refusal(info: zipfile.ZipInfo, compressed: int, max_ratio: int) -> str | None:
    """Why a member is refused from its header alone (name, symlink, encryption, ratio), or None to read it."""
    reason = unsafe_member(info.orig_filename)  # zipfile cuts `filename` at a NUL byte; this sees the whole name
    if reason is None and stat.S_ISLNK(info.external_attr >> 16):
        reason = "refused: symbolic link in archive"
    if reason is None and info.flag_bits & 0x1:
        reason = "refused: encrypted archive members are not supported"
    if reason is None and info.file_size > RATIO_FLOOR_BYTES and info.file_size / max(compressed, 1) > max_ratio:
        reason = ratio_refusal(max_ratio)
    return reason


def ratio_refusal(max_ratio: int) -> str:
    """The reason given for a member that expands more than `max_ratio` times."""
    return f"refused: compression ratio above {max_ratio}:1"


def over_budget(max_total: int) -> str:
    """The reason given when the archives expand to more than `max_total` bytes in all."""
    return f"the archives expand to more than {max_total} bytes, the limit"


def unreadable_archive(exc: BaseException) -> str:
    """The reason given for a file that looks like a zip but cannot be opened as one."""
    return f"{DAMAGED_ZIP} ({exc})"


def corrupt_member(exc: BaseException) -> str:
    """The reason given for a member whose bytes cannot be read."""
    return f"corrupt archive member ({exc})"


def sniff(head: bytes, name: str = "") -> str | None:
    """'image', 'dicom' or 'zip' from a file's first HEAD_BYTES bytes, None when none of them.

    Told by the bytes, never the extension; only a DICOM data set written without its preamble is taken as one
    by its name (.dcm) too, as nothing else marks it.
    """
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if dicom.is_dicom(head, name):
        return "dicom"
    return None


def not_an_image(head: bytes, name: str = "") -> str:
    """The reason given for a file whose first bytes `sniff` recognises as none of image, DICOM or zip."""
    if not head:
        return "empty file"
    if name.lower().endswith(dicom.SUFFIXES):
        return "not a DICOM file: no 'DICM' after a 128-byte preamble, and no data set at its start"
    if name.lower().endswith(".zip"):
        return DAMAGED_ZIP + ": it does not begin as a zip archive does"
    return "not an image: unrecognised file format"


class Guarded:
    """Counts what a zip member really expands to (headers can lie) and stops bombs mid-read."""

    def __init__(self, src: IO[bytes], compressed: int, max_ratio: int, budget: int) -> None:
        self._src = src
        self._compressed = max(compressed, 1)
        self._max_ratio = max_ratio
        self._budget = budget
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        block = self._src.read(n)
        self.count += len(block)
        if self.count > self._budget:
            raise TooLarge("archive contents exceed the upload limit")
        if self.count > RATIO_FLOOR_BYTES and self.count / self._compressed > self._max_ratio:
            raise Bomb(ratio_refusal(self._max_ratio))
        return block


class Refused(Exception):
    """One entry is refused (unreadable archive, unsafe or corrupt member, not an image); the message says why."""


class ArchiveRefused(Exception):
    """A whole archive is refused before or while reading (too many entries, more bytes than the limit)."""


class Prefixed:
    """A reader that replays bytes already peeked at, then continues with the stream."""

    def __init__(self, head: bytes, rest: IO[bytes] | Guarded) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out = self._head if n < 0 else self._head[:n]
            self._head = self._head[len(out) :]
            return out
        return self._rest.read(n)


@dataclass(frozen=True)
class Member:
    """A file entry of a zip: its display path, and why it is refused from its header alone (or None)."""

    info: zipfile.ZipInfo
    path: str
    refusal: str | None
    compressed: int


class ZipReader:
    """Reads the zip archives of one upload (web) or one run (`fracture classify`) under one set of caps.

    The only zip reader of the system: entries are listed and read member by member (never extracted), with the
    member-name rules of `member_refusal`, caps on entries and on the uncompressed total (declared in headers and
    counted while reading, as headers can lie), the compression-ratio guard, and content sniffing.
    """

    def __init__(self, max_members: int, max_total_bytes: int, max_ratio: int) -> None:
        self.max_members = max_members
        self.max_total_bytes = max_total_bytes
        self.max_ratio = max_ratio
        self.unzipped = 0

    def open(self, source: str | Path | IO[bytes]) -> tuple[zipfile.ZipFile, list[Member], int]:
        """Open an archive and list its files: (zip, members in order, junk files skipped).

        Raises Refused when it is not a readable zip, ArchiveRefused when its headers break a cap.
        """
        try:
            # No member holds more compressed bytes than the archive: a header claiming more hides a bomb's ratio.
            if isinstance(source, str | Path):
                size = Path(source).stat().st_size
            else:
                size = source.seek(0, io.SEEK_END)
                source.seek(0)
            zf = zipfile.ZipFile(source)
        except ZIP_ERRORS as exc:
            raise Refused(unreadable_archive(exc)) from exc
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos if not i.is_dir())
        refusal = None
        if len(infos) > self.max_members:
            refusal = f"the archive has {len(infos)} entries, more than the limit of {self.max_members}"
        elif declared > self.max_total_bytes - self.unzipped:
            refusal = (f"the archive declares {declared} bytes uncompressed, and the archives of one upload may "
                       f"not expand to more than {self.max_total_bytes} bytes")
        if refusal is not None:
            zf.close()
            raise ArchiveRefused(refusal)
        members, skipped = [], 0
        for info in infos:
            raw = info.orig_filename  # zipfile cuts `filename` at a NUL byte; the rules must see the whole name
            if info.is_dir():
                continue
            if is_junk(raw):
                skipped += 1
                continue
            compressed = min(info.compress_size, size)
            members.append(Member(info, clean_path(raw), member_refusal(info, compressed, self.max_ratio), compressed))
        return zf, members, skipped

    @contextmanager
    def read(self, zf: zipfile.ZipFile, member: Member) -> Iterator[Prefixed]:
        """A reader of an image member's bytes, counted as they are read.

        Raises Refused (refused header, nested archive, not an image, bomb, corrupt bytes) or ArchiveRefused
        (the archives of this reader expand past max_total_bytes), also while the caller reads.
        """
        if member.refusal is not None:
            raise Refused(member.refusal)
        guarded: Guarded | None = None
        try:
            with zf.open(member.info) as src:
                guarded = Guarded(src, member.compressed, self.max_ratio, self.max_total_bytes - self.unzipped)
                head = guarded.read(HEAD_BYTES)
                kind = sniff(head, member.path)
                if kind == "zip":
                    raise Refused(NESTED_ARCHIVE)
                if kind is None:
                    raise Refused(not_an_image(head, member.path))
                yield Prefixed(head, guarded)
        except TooLarge as exc:
            raise ArchiveRefused(over_budget(self.max_total_bytes)) from exc
        except Bomb as exc:
            raise Refused(str(exc)) from exc
        except ZIP_ERRORS as exc:
            raise Refused(corrupt_member(exc)) from exc
        finally:
            # What a refused member expanded to before it was stopped counts against the total too.
            self.unzipped += guarded.count if guarded is not None else 0
