"""Heatmaps in the API: where the served model looked in one image, computed on first request by the worker."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from flask import Blueprint, Response, abort, jsonify, request

from fracture import heatmaps
from fracture.models import HeatmapStatus, Image
from fracture.queue import BrokerUnavailable, send_heatmap
from web.auth import job_or_404
from web.context import celery, db, send_stored_png, storage

bp = Blueprint("heatmaps", __name__)
RETRY_AFTER_S = 2  # a heatmap takes well under a second on a CPU once the worker has the model loaded


def _json(body: dict[str, object], status: int, **headers: str) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


@bp.get("/api/jobs/<job_id>/images/<int:image_id>/heatmap.png")
def heatmap(job_id: str, image_id: int) -> Response:
    """The overlay (RGBA PNG at the image's aspect, transparent where the model found nothing); with ?download=1 the
    image with the overlay drawn on, as an attachment. 202 while the worker computes it (the first call asks)."""
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
    if request.args.get("download", "").lower() in ("1", "true", "yes"):
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
