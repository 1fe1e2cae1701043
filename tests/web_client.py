"""Helpers shared by the web tests: an app per test from the factory, and multipart posts built in memory."""

from __future__ import annotations

import io

from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, stream_encode_multipart

from fracture.config import Settings
from web import create_app


def make_client(settings: Settings, **config: object) -> FlaskClient:
    """A test client of a fresh app built by the factory for `settings`."""
    return create_app({"FRACTURE_SETTINGS": settings, "TESTING": True, **config}).test_client()


def multipart(files: list[tuple[bytes, str]]) -> tuple[bytes, str]:
    """Encode `files` as `files` parts in memory (werkzeug's own encoder leaks a temp file on large bodies)."""
    data = MultiDict([("files", FileStorage(io.BytesIO(content), filename=name)) for content, name in files])
    stream, _length, boundary = stream_encode_multipart(data, use_tempfile=False)
    return stream.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_files(client: FlaskClient, files: list[tuple[bytes, str]]) -> TestResponse:
    body, content_type = multipart(files)
    return client.post("/api/jobs", data=body, content_type=content_type)
