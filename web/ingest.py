"""Turn the files of an upload (loose files, folders, zips) into stored blobs and Image rows to be."""

from __future__ import annotations

import io
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Protocol

from fracture.config import Settings
from fracture.storage import Storage, TooLarge

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
# Below this size a high compression ratio is harmless (a blank test image); above it, a bomb.
RATIO_FLOOR_BYTES = 1 << 20
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")  # C:\x, C:/x and drive-relative C:x
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
# What zipfile raises on a damaged archive (found by fuzzing: a bad version is NotImplementedError, a header
# offset before the file's start a ValueError from seek); all mean "this archive or member is unreadable".
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ValueError, struct.error)


class UploadRefused(Exception):
    """The upload as a whole is refused; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class FilePart(Protocol):
    """What the ingest needs of an uploaded part (werkzeug's FileStorage has it)."""

    @property
    def filename(self) -> str | None: ...

    @property
    def stream(self) -> IO[bytes]: ...


@dataclass
class Entry:
    """One file of the upload: becomes one Image row; `ingest_error` set when it was refused here."""

    seq: int
    path: str
    storage_key: str | None = None
    size_bytes: int | None = None
    ingest_error: str | None = None


@dataclass
class Upload:
    """What an upload produced: its entries in upload order, and how many junk files were skipped."""

    entries: list[Entry] = field(default_factory=list)
    skipped: int = 0

    @property
    def usable(self) -> int:
        return sum(1 for e in self.entries if e.ingest_error is None)


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


def sniff(head: bytes) -> str | None:
    """'image' or 'zip' from a file's first bytes (never its extension), None when neither."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return None


class _Prefixed:
    """A reader that replays bytes already peeked at, then continues with the stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out = self._head if n < 0 else self._head[:n]
            self._head = self._head[len(out) :]
            return out
        return self._rest.read(n)


class _Guarded:
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
            raise _Bomb(f"refused: compression ratio above {self._max_ratio}:1")
        return block


class _Bomb(Exception):
    pass


class Ingest:
    """Stream every part of one upload into storage under `uploads/<job_id>/<seq>`."""

    def __init__(self, storage: Storage, settings: Settings, job_id: str) -> None:
        self.storage = storage
        self.settings = settings
        self.job_id = job_id
        self.upload = Upload()
        self.unzipped_bytes = 0

    def add_part(self, part: FilePart) -> None:
        raw = part.filename or ""
        path = clean_path(raw)
        if is_junk(raw) or raw.endswith(("/", "\\")):
            self.upload.skipped += 1
            return
        head = part.stream.read(16)
        kind = sniff(head)
        if kind == "zip" or (not head and path.lower().endswith(".zip")):
            part.stream.seek(0)
            self._add_zip(path, part.stream)
        else:
            self._store(path, _Prefixed(head, part.stream), kind, len(head))

    def _next_seq(self) -> int:
        seq = len(self.upload.entries) + 1
        if seq > self.settings.max_files_per_job:
            raise UploadRefused(
                f"too many files: a job takes at most {self.settings.max_files_per_job} files; split the upload", 413
            )
        return seq

    def _refuse(self, path: str, reason: str) -> None:
        self.upload.entries.append(Entry(seq=self._next_seq(), path=path, ingest_error=reason))

    def _store(self, path: str, src: _Prefixed | _Guarded, kind: str | None, head_len: int) -> None:
        if kind is None:
            self._refuse(path, "empty file" if head_len == 0 else "not an image: unrecognised file format")
            return
        seq = self._next_seq()
        key = f"uploads/{self.job_id}/{seq:06d}"
        size = self.storage.write_stream(key, src)  # type: ignore[arg-type]
        self.upload.entries.append(Entry(seq=seq, path=path, storage_key=key, size_bytes=size))

    def _add_zip(self, name: str, stream: IO[bytes]) -> None:
        try:
            # No member holds more compressed bytes than the archive: a header claiming more hides a bomb's ratio.
            archive_size = stream.seek(0, io.SEEK_END)
            stream.seek(0)
            archive = zipfile.ZipFile(stream)
        except _ZIP_ERRORS as exc:
            self._refuse(name, f"not a readable zip archive ({exc})")
            return
        with archive:
            infos = archive.infolist()
            if len(infos) > self.settings.max_zip_members:
                raise UploadRefused(
                    f"{name}: the archive has {len(infos)} entries, more than the limit of "
                    f"{self.settings.max_zip_members}",
                    413,
                )
            # Headers are checked before anything is read; _Guarded still counts real bytes, as headers can lie.
            declared = sum(i.file_size for i in infos if not i.is_dir())
            if declared > self.settings.max_zip_total_bytes - self.unzipped_bytes:
                raise UploadRefused(
                    f"{name}: the archive declares {declared} bytes uncompressed, and the archives of one upload may "
                    f"not expand to more than {self.settings.max_zip_total_bytes} bytes",
                    413,
                )
            for info in infos:
                self._add_member(archive, info, min(info.compress_size, archive_size))

    def _add_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, compressed: int) -> None:
        raw = info.orig_filename  # zipfile cuts `filename` at a NUL byte; the refusal must see the whole name
        if info.is_dir() or is_junk(raw):
            self.upload.skipped += int(not info.is_dir())
            return
        path = clean_path(raw)
        reason = unsafe_member(raw)
        if reason is None and stat.S_ISLNK(info.external_attr >> 16):
            reason = "refused: symbolic link in archive"
        if reason is None and info.flag_bits & 0x1:
            reason = "refused: encrypted archive members are not supported"
        if reason is None and info.file_size > RATIO_FLOOR_BYTES and (
            info.file_size / max(compressed, 1) > self.settings.max_zip_ratio
        ):
            reason = f"refused: compression ratio above {self.settings.max_zip_ratio}:1"
        if reason is not None:
            self._refuse(path, reason)
            return
        budget = self.settings.max_zip_total_bytes - self.unzipped_bytes
        guarded: _Guarded | None = None
        try:
            with archive.open(info) as member:
                guarded = _Guarded(member, compressed, self.settings.max_zip_ratio, budget)
                head = guarded.read(16)
                kind = sniff(head)
                if kind == "zip":
                    self._refuse(path, "refused: nested archives are not opened")
                else:
                    self._store(path, _Prefixed(head, guarded), kind, len(head))  # type: ignore[arg-type]
        except TooLarge as exc:
            raise UploadRefused(
                f"the archives expand to more than {self.settings.max_zip_total_bytes} bytes, the limit", 413
            ) from exc
        except _Bomb as exc:
            self._refuse(path, str(exc))
        except _ZIP_ERRORS as exc:
            self._refuse(path, f"corrupt archive member ({exc})")
        finally:
            # What a refused member expanded to before it was stopped counts against the upload's total too.
            self.unzipped_bytes += guarded.count if guarded is not None else 0


def ingest_parts(parts: Iterable[FilePart], storage: Storage, settings: Settings, job_id: str) -> Upload:
    """Store every part; on refusal nothing of this upload stays in storage."""
    ingest = Ingest(storage, settings, job_id)
    try:
        for part in parts:
            ingest.add_part(part)
    except BaseException:
        storage.delete_prefix(f"uploads/{job_id}")
        raise
    return ingest.upload
