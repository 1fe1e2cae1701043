"""The one place that touches the shared storage folder; keys are ours, never user file names."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class StorageError(RuntimeError):
    pass


class TooLarge(StorageError):
    pass


class Storage:
    """A folder of blobs addressed by generated keys such as ``uploads/<job>/000001``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file for `key`; refuses any key that could leave the storage folder."""
        if not _KEY.match(key) or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root):
            raise StorageError(f"invalid storage key {key!r}")
        return p

    def write_stream(self, key: str, src: BinaryIO, max_bytes: int | None = None, chunk: int = 1 << 20) -> int:
        """Copy `src` to `key` in chunks (never whole in memory); atomic rename at the end."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        written = 0
        try:
            with open(tmp, "wb") as out:
                while block := src.read(chunk):
                    written += len(block)
                    if max_bytes is not None and written > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
                    out.write(block)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return written

    def write_bytes(self, key: str, data: bytes, durable: bool = False) -> None:
        """Write `data` to `key` (atomic rename); `durable`: on disk (file and folder synced) before returning, for
        bytes acknowledged to a sender that will not send them again."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        if durable:
            folder = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)
