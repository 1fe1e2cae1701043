"""Per-app and per-request handles: settings, the database session, storage, Celery, the active model."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from celery import Celery
from flask import Response, abort, current_app, g, request, send_file, stream_with_context
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from fracture.config import Settings
from fracture.jobs import csv_row
from fracture.models import ModelVersion
from fracture.registry import active_version, ensure_seed_model
from fracture.storage import Storage, StorageError

log = logging.getLogger(__name__)


def settings() -> Settings:
    value: Settings = current_app.config["FRACTURE_SETTINGS"]
    return value


def db() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = current_app.extensions["fracture_sessions"]()
    session: Session = g.db
    return session


def close_db(_exc: BaseException | None = None) -> None:
    """Close the request's session. A database that went away during the request (a restart ends every
    connection) makes the closing rollback fail: the answer is already made, so drop the dead connection rather
    than turn that answer into a 500."""
    session = g.pop("db", None)
    if session is None:
        return
    try:
        session.close()
    except SQLAlchemyError as e:
        log.warning("the database connection of this request was lost (%s); dropped", e.__class__.__name__)
        with contextlib.suppress(SQLAlchemyError):
            session.invalidate()


def storage() -> Storage:
    return Storage(settings().storage_dir)


def send_stored_png(key: object, what: str = "plot", mimetype: str = "image/png") -> Response:
    """Serve the PNG (or `mimetype`) stored under `key` (a key recorded on a row, never a path taken from the URL);
    404 if none."""
    if not isinstance(key, str):
        abort(404, description=f"No such {what}.")
    try:
        path = storage().path(key)
    except StorageError:
        abort(404, description=f"No such {what}.")
    if not path.is_file():
        abort(404, description=f"The {what} file is missing from storage.")
    return send_file(path, mimetype=mimetype, max_age=3600)


def celery() -> Celery:
    app: Celery = current_app.extensions["celery"]
    return app


def active_model() -> ModelVersion | None:
    """The active model version; on a fresh install, register the shipped release checkpoint first."""
    session = db()
    version = active_version(session)
    if version is None and settings().seed_model is not None:
        try:
            version = ensure_seed_model(session, settings())
            session.commit()
        except IntegrityError:  # another web process registered it at the same moment: theirs is the one
            session.rollback()
            version = active_version(session)
    return version


NO_MODEL_MESSAGE = (
    "No trained model is registered yet, so jobs cannot be accepted. "
    "Train one (fracture train) or register a checkpoint, then try again."
)


def csv_download(columns: Sequence[str], rows: Callable[[Session], Iterable[Mapping[str, object]]],
                 filename: str) -> Response:
    """Stream `rows(session)` as a CSV attachment of `columns`, 500 rows a write: a 20,000-image job never sits in
    memory. Every cell goes through fracture.jobs.csv_row (numbers rounded, formula-like text made safe).

    The rows are read in the generator, from the session it opens: Flask tears the request down (closing the
    view's session) when the view returns and again when the stream ends, so rows read through the view's session
    would open a connection that nothing closes (schemathesis exhausted the pool that way)."""

    def generate() -> Iterator[str]:
        session = db()  # the stream's own: closed by the teardown that follows the last row
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for n, row in enumerate(rows(session), 1):
            writer.writerow(csv_row(row, columns))
            if n % 500 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# Paths only programs call (the JSON API, DICOMweb): their errors are JSON and a missing login is a 401, never a
# redirect to the login page.
MACHINE_PATHS = ("/api/", "/dicom-web/")


def machine_request() -> bool:
    """Whether this request is to the JSON API or DICOMweb rather than a page."""
    return request.path.startswith(MACHINE_PATHS)
