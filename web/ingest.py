"""Turn the files of an upload (loose files, folders, zips) into stored blobs and Image rows to be."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Protocol

from fracture.archive import (
    NESTED_ARCHIVE,
    ZIP_ERRORS,
    Bomb,
    Guarded,
    clean_path,
    corrupt_member,
    is_junk,
    member_refusal,
    not_an_image,
    over_budget,
    sniff,
    unreadable_archive,
)
from fracture.config import Settings
from fracture.storage import Storage, TooLarge


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
            self._store(path, _Prefixed(head, part.stream), head)

    def _next_seq(self) -> int:
        seq = len(self.upload.entries) + 1
        if seq > self.settings.max_files_per_job:
            raise UploadRefused(
                f"too many files: a job takes at most {self.settings.max_files_per_job} files; split the upload", 413
            )
        return seq

    def _refuse(self, path: str, reason: str) -> None:
        self.upload.entries.append(Entry(seq=self._next_seq(), path=path, ingest_error=reason))

    def _store(self, path: str, src: _Prefixed | Guarded, head: bytes) -> None:
        if sniff(head) is None:
            self._refuse(path, not_an_image(head))
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
        except ZIP_ERRORS as exc:
            self._refuse(name, unreadable_archive(exc))
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
        reason = member_refusal(info, compressed, self.settings.max_zip_ratio)
        if reason is not None:
            self._refuse(path, reason)
            return
        budget = self.settings.max_zip_total_bytes - self.unzipped_bytes
        guarded: Guarded | None = None
        try:
            with archive.open(info) as member:
                guarded = Guarded(member, compressed, self.settings.max_zip_ratio, budget)
                head = guarded.read(16)
                if sniff(head) == "zip":
                    self._refuse(path, NESTED_ARCHIVE)
                else:
                    self._store(path, _Prefixed(head, guarded), head)  # type: ignore[arg-type]
        except TooLarge as exc:
            raise UploadRefused(over_budget(self.settings.max_zip_total_bytes), 413) from exc
        except Bomb as exc:
            self._refuse(path, str(exc))
        except ZIP_ERRORS as exc:
            self._refuse(path, corrupt_member(exc))
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
