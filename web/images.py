"""One job's images for the reader: thumbnails, the full image, the summary, and the image viewer page."""

from __future__ import annotations

import io

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, send_file
from flask.typing import ResponseReturnValue
from PIL import Image as PILImage

from fracture.decode import ImageError, decode_gray
from fracture.models import Image, Job
from fracture.storage import StorageError
from web.auth import job_or_404
from web.context import db, send_stored_png, settings, storage
from web.views import RowQuery, job_dict, job_summary, neighbours, parse_row_query, result_rows

bp = Blueprint("images", __name__)

# The viewer's full image: large enough to zoom into a 3,000-px radiograph, small enough to send quickly.
DISPLAY_MAX_SIDE = 4096


def _image_of(job: Job, image_id: int) -> Image:
    image = db().get(Image, image_id)
    if image is None or image.job_id != job.id:
        abort(404, description=f"job {job.id} has no image {image_id}")
    return image


@bp.get("/api/jobs/<job_id>/images/<int:image_id>/thumbnail.jpg")
def thumbnail(job_id: str, image_id: int) -> Response:
    image = _image_of(job_or_404(job_id), image_id)
    return send_stored_png(image.thumbnail_key, "thumbnail", mimetype="image/jpeg")


@bp.get("/api/jobs/<job_id>/images/<int:image_id>/image.png")
def full_image(job_id: str, image_id: int) -> Response:
    """The image as the model read it (grayscale; a DICOM file with its modality and VOI LUT), losslessly as PNG."""
    image = _image_of(job_or_404(job_id), image_id)
    if not image.storage_key:
        abort(404, description=f"image {image_id} has no stored file ({image.ingest_error or 'not kept'})")
    try:
        with storage().open(image.storage_key) as f:
            gray = decode_gray(f, DISPLAY_MAX_SIDE, settings().max_image_pixels)
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


@bp.get("/api/jobs/<job_id>/summary")
def summary(job_id: str) -> Response:
    return jsonify(job_summary(db(), job_or_404(job_id), settings().uncertain_margin))


@bp.get("/jobs/<job_id>/images/<int:image_id>")
def viewer(job_id: str, image_id: int) -> ResponseReturnValue:
    """One image full size, with its result and review, stepping through the reader's filtered, sorted list."""
    job = job_or_404(job_id)
    image = _image_of(job, image_id)
    query = parse_row_query(request.args)
    margin = settings().uncertain_margin
    before, after, position, count = neighbours(db(), job, image.id, query, margin)
    row = result_rows(db(), job, query=RowQuery(image_id=image.id), patient=settings().show_patient_identifiers)[0]
    threshold = job.model_version.threshold if job.model_version else None
    return render_template("viewer.html", job=job_dict(job), row=row, query=query.args(), before=before,
                           after=after, position=position, count=count, threshold=threshold,
                           page_size=current_app.config["RESULTS_PAGE_SIZE"])
