"""A request class that closes every upload spool it opened, even when parsing is cut short."""

from __future__ import annotations

from typing import IO

from flask import Request


class UploadRequest(Request):
    """werkzeug leaves the spools of earlier parts open when a later part trips MAX_FORM_PARTS; close them."""

    def _get_file_stream(
        self, total_content_length: int | None, content_type: str | None, filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        stream = super()._get_file_stream(total_content_length, content_type, filename, content_length)
        self.__dict__.setdefault("_spools", []).append(stream)
        return stream

    def close(self) -> None:
        super().close()
        for stream in self.__dict__.pop("_spools", []):
            stream.close()
