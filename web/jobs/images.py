"""One job's images: thumbnails, the full image, the heatmap, the summary (API), and the image viewer page."""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath
from typing import Any

from flask import Response, abort, current_app, jsonify, render_template, request, send_file
from flask.typing import ResponseReturnValue
from PIL import Image as PILImage

from fracture import heatmaps
from fracture.decode import ImageError, decode_gray
from fracture.models import HeatmapStatus, Image, Job
from fracture.queue import BrokerUnavailable, send_heatmap
from fracture.storage import StorageError
from web.auth import job_or_404
from web.context import celery, db, send_stored_png, settings, storage
from web.jobs import schemas as s
from web.jobs.api import bp as api
from web.jobs.pages import bp as pages
from web.jobs.queries import RowQuery, job_summary, neighbours, parse_row_query, result_rows
from web.jobs.schemas import job_json

# The viewer's full image: large enough to zoom into a 3,000-px radiograph, small enough to send quickly.
DISPLAY_MAX_SIDE = 4096
RETRY_AFTER_S = 2  # a heatmap takes well under a second on a CPU once the worker has the model loaded
PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def _image_of(job: Job, image_id: int) -> Image:
    image = db().get(Image, image_id)
    if image is None or image.job_id != job.id:
        abort(404, description=f"job {job.id} has no image {image_id}")
    return image


@api.get("/jobs/<job_id>/images/<int:image_id>/thumbnail.jpg")
@api.doc(responses={"200": {"description": "A JPEG thumbnail.",
                            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
def thumbnail(job_id: str, image_id: int) -> Response:
    """The image's thumbnail, as the job page lists it."""
    image = _image_of(job_or_404(job_id), image_id)
    return send_stored_png(image.thumbnail_key, "thumbnail", mimetype="image/jpeg")


@api.get("/jobs/<job_id>/images/<int:image_id>/image.png")
@api.doc(responses={"200": {"description": "The image, lossless.", **PNG}})
def full_image(job_id: str, image_id: int) -> Response:
    """The image as the model read it (grayscale; a DICOM file with its modality and VOI LUT), losslessly as PNG."""
    image = _image_of(job_or_404(job_id), image_id)
    if not image.storage_key:
        abort(404, description=f"image {image_id} has no stored file ({image.ingest_error or 'not kept'})")
    try:
        with storage().open(image.storage_key) as fh:
            gray = decode_gray(fh, DISPLAY_MAX_SIDE, settings().max_image_pixels)
    except (StorageError, FileNotFoundError):
        abort(404, description=f"the file of image {image_id} is missing from storage")
    except ImageError as e:
        abort(422, description=f"image {image_id} cannot be shown: {e}")
    if max(gray.size) > DISPLAY_MAX_SIDE:
        gray.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), PILImage.Resampling.BILINEAR)
    out = io.BytesIO()
    gray.save(out, format="PNG", compress_level=1)
    out.seek(0)
    return send_file(out, mimetype="image/png")  # no-store, as every response holding patient data


@api.get("/jobs/<job_id>/summary")
@api.response(200, s.SummarySchema)
def summary(job_id: str) -> dict[str, Any]:
    """Counts by call, flag, error and review, and the histogram of probabilities (the job page's header)."""
    return job_summary(db(), job_or_404(job_id), settings().uncertain_margin)


def _json(body: dict[str, object], status: int, **headers: str) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


@api.get("/jobs/<job_id>/images/<int:image_id>/heatmap.png")
@api.arguments(s.HeatmapQuery, location="query")
@api.doc(responses={"200": {"description": "The overlay (RGBA PNG), or with download=1 the image with it.", **PNG}})
@api.alt_response(202, schema=s.PendingSchema, description="The worker is computing it: ask again.")
def heatmap(args: dict[str, Any], job_id: str, image_id: int) -> Response:
    """Where the served model looked: the overlay at the image's aspect, transparent where it found nothing.

    202 while the worker computes it (the first call asks); with download=1 the image with the overlay drawn on,
    as an attachment."""
    job = job_or_404(job_id)
    session = db()
    try:
        asked = heatmaps.request(session, job, image_id, storage())
    except LookupError as e:
        abort(404, description=str(e))
    except heatmaps.HeatmapRefused as e:
        session.rollback()
        abort(422 if e.final else 409, description=str(e))
    session.commit()
    row = asked.heatmap
    if asked.send:
        try:
            send_heatmap(celery(), job.id, image_id, row.model_version_id)
        except BrokerUnavailable as e:
            heatmaps.withdraw(session, row)  # not sent: the next ask sends it, instead of waiting for it
            session.commit()
            return _json({"error": f"The heatmap cannot be computed now: {e}. Try again shortly."}, 503,
                         **{"Retry-After": "30"})
    if row.status == HeatmapStatus.FAILED:
        return _json({"error": f"no heatmap for image {image_id}: {row.error}", "status": row.status}, 422)
    if row.status != HeatmapStatus.DONE or asked.send:
        return _json({"status": HeatmapStatus.PENDING}, 202, **{"Retry-After": str(RETRY_AFTER_S)})
    if (args.get("download") or "").lower() in ("1", "true", "yes"):
        response = send_stored_png(heatmaps.composite_key(str(row.storage_key)), "heatmap")
        response.headers["Content-Disposition"] = f'attachment; filename="{_download_name(image_id)}"'
    else:
        response = send_stored_png(row.storage_key, "heatmap")
    return response


def _download_name(image_id: int) -> str:
    """`<the image's file name without extension>-heatmap.png`, kept to safe characters for the header."""
    image = db().get(Image, image_id)
    stem = PurePosixPath((image.path if image else "") or f"image-{image_id}").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or f"image-{image_id}"
    return f"{stem[:100]}-heatmap.png"


@pages.get("/jobs/<job_id>/images/<int:image_id>")
def viewer(job_id: str, image_id: int) -> ResponseReturnValue:
    """One image full size, with its result and review, stepping through the reader's filtered, sorted list."""
    job = job_or_404(job_id)
    image = _image_of(job, image_id)
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    before, after, position, count = neighbours(db(), job, image.id, query, margin)
    row = result_rows(db(), job, query=RowQuery(image_id=image.id), patient=settings().show_patient_identifiers)[0]
    threshold = job.model_version.threshold if job.model_version else None
    return render_template("viewer.html", job=job_json(job), row=row, query=query.args(), before=before,
                           after=after, position=position, count=count, threshold=threshold,
                           page_size=current_app.config["RESULTS_PAGE_SIZE"])
