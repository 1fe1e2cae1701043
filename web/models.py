"""Model actions shared by the page and the API: promotion (the callers check that the user is an admin)."""

from __future__ import annotations

from flask import abort

from fracture.models import ModelVersion
from fracture.registry import promote
from web.context import db


def promote_version(version_id: int) -> ModelVersion:
    """Make `version_id` the active model; 404 if it does not exist. New jobs use it, queued ones keep theirs."""
    session = db()
    version = session.get(ModelVersion, version_id)
    if version is None:
        abort(404, description=f"There is no model version with id {version_id}.")
    promote(session, version)
    session.commit()
    return version
