"""Turn the files of an upload (loose files, folders, zips) into stored blobs and Image rows to be."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Protocol

from fracture.archive import (
    HEAD_BYTES,
    ArchiveRefused,
    Prefixed,
    Refused,
    ZipReader,
    clean_path,
    is_junk,
    not_an_image,
    sniff,
)
from fracture.config import Settings
from fracture.jobs import NewImage, stored_image
from fracture.storage import Storage


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
class Upload:
    """What an upload produced: its entries in upload order, how many junk files were skipped, and the names of
    what was uploaded (a zip's name without `.zip`, a chosen folder's name, a loose file's name), first seen first."""

    entries: list[NewImage] = field(default_factory=list)
    skipped: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return sum(1 for e in self.entries if e.ingest_error is None)


class Ingest:
    """Stream every part of one upload into storage under `uploads/<job_id>/<seq>`."""

    def __init__(self, storage: Storage, settings: Settings, job_id: str) -> None:
        self.storage = storage
        self.settings = settings
        self.job_id = job_id
        self.upload = Upload()
        self.zips = ZipReader(settings.max_zip_members, settings.max_zip_total_bytes, settings.max_zip_ratio)

    def add_part(self, part: FilePart) -> None:
        raw = part.filename or ""
        path = clean_path(raw)
        if is_junk(raw) or raw.endswith(("/", "\\")):
            self.upload.skipped += 1
            return
        head = part.stream.read(HEAD_BYTES)
        kind = sniff(head, path)
        is_zip = kind == "zip" or (not head and path.lower().endswith(".zip"))
        self._name_source(path, is_zip)
        if is_zip:
            part.stream.seek(0)
            self._add_zip(path, part.stream)
        elif kind is None:
            self._refuse(path, not_an_image(head, path))
        else:
            self._store(path, Prefixed(head, part.stream))

    def _name_source(self, path: str, is_zip: bool) -> None:
        # A folder's files arrive as "folder/sub/x.jpg": the folder is what the user chose, not "sub".
        if "/" in path:
            source = path.split("/", 1)[0]
        elif is_zip:
            source = source_name(path)
        else:
            source = path
        if source not in self.upload.sources:
            self.upload.sources.append(source)

    def _next_seq(self) -> int:
        seq = len(self.upload.entries) + 1
        if seq > self.settings.max_files_per_job:
            raise UploadRefused(
                f"too many files: a job takes at most {self.settings.max_files_per_job} files; split the upload", 413
            )
        return seq

    def _refuse(self, path: str, reason: str) -> None:
        self.upload.entries.append(NewImage(seq=self._next_seq(), path=path, ingest_error=reason))

    def _store(self, path: str, src: Prefixed) -> None:
        seq = self._next_seq()
        key = f"uploads/{self.job_id}/{seq:06d}"
        size = self.storage.write_stream(key, src)  # type: ignore[arg-type]
        self.upload.entries.append(
            stored_image(seq, path, key, size, self.storage.path(key), self.settings.show_patient_identifiers)
        )

    def _add_zip(self, name: str, stream: IO[bytes]) -> None:
        try:
            archive, members, skipped = self.zips.open(stream)
        except Refused as exc:
            self._refuse(name, str(exc))
            return
        except ArchiveRefused as exc:
            raise UploadRefused(f"{name}: {exc}", 413) from exc
        self.upload.skipped += skipped
        with archive:
            for member in members:
                try:
                    with self.zips.read(archive, member) as src:
                        self._store(member.path, src)
                except Refused as exc:
                    self._refuse(member.path, str(exc))
                except ArchiveRefused as exc:
                    raise UploadRefused(str(exc), 413) from exc


def source_name(filename: str) -> str:
    """The name a zip archive was uploaded under, without its extension ("xrays40.zip" -> "xrays40")."""
    stem = filename[: -len(".zip")] if filename.lower().endswith(".zip") else filename
    return stem or filename


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
