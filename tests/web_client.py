"""Helpers shared by the web tests: an app per test from the factory, and multipart posts built in memory."""

from __future__ import annotations

import io
from pathlib import Path

from flask.testing import FlaskClient
from installation import TEST_ADMIN
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, stream_encode_multipart

from fracture.config import Settings
from web import create_app


def make_client(settings: Settings, *, as_user: str | None = TEST_ADMIN, token: str | None = None,
                **config: object) -> FlaskClient:
    """A test client of a fresh app for `settings` that sends a Bearer token on every request.

    The token is `token`, else a fresh one of user `as_user` (the fixture's admin by default);
    `as_user=None` without a token makes an anonymous client.
    """
    client = create_app({"FRACTURE_SETTINGS": settings, "TESTING": True, **config}).test_client()
    if token is None and as_user is not None:
        token = user_token(settings, as_user)
    if token is not None:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def user_token(settings: Settings, username: str) -> str:
    """Issue another API token for `username` (created as an admin if this installation lacks it)."""
    from fracture.accounts import create_user, find_user, issue_token
    from fracture.db import session_scope

    with session_scope(settings.database_url) as session:
        user = find_user(session, username)
        if user is None:
            return create_user(session, username, admin=True).token
        return issue_token(session, user, "test")


def multipart(files: list[tuple[bytes, str]]) -> tuple[bytes, str]:
    """Encode `files` as `files` parts in memory (werkzeug's own encoder leaks a temp file on large bodies)."""
    data = MultiDict([("files", FileStorage(io.BytesIO(content), filename=name)) for content, name in files])
    stream, _length, boundary = stream_encode_multipart(data, use_tempfile=False)
    return stream.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_files(client: FlaskClient, files: list[tuple[bytes, str]]) -> TestResponse:
    body, content_type = multipart(files)
    return client.post("/api/jobs", data=body, content_type=content_type)


def ready_dataset(client: FlaskClient, settings: Settings, path: Path, name: str, role: str = "training") -> int:
    """Register folder `path` through the API and validate it in this process (the trainer's task body); its id."""
    from trainer.dataset_validation import validate_dataset

    posted = client.post("/api/datasets", json={"path": str(path), "name": name, "role": role})
    assert posted.status_code == 201, posted.get_json()
    dataset_id = int(posted.get_json()["id"])
    assert validate_dataset(settings, dataset_id) == "ready"
    return dataset_id
