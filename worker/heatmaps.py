"""Make the heatmap of one image with the job's model version, and ask for those of a chunk's positive images; plain
code the tasks call."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fracture import heatmaps
from fracture.config import Settings
from fracture.db import session_scope
from fracture.ml import gradcam
from fracture.ml.checkpoint import CheckpointError
from fracture.ml.preprocess import ImageError, load_u8
from fracture.models import Image, Job, ModelVersion
from fracture.storage import Storage, StorageError
from worker.classify import load_predictor

log = logging.getLogger(__name__)


def make_heatmap(settings: Settings, job_id: str, image_id: int, version_id: int) -> str:
    """Compute, store and record the heatmap of `image_id` under `version_id`; return what happened.

    Safe to run twice: a heatmap already done (its file in storage) is not computed again.
    """
    storage = Storage(settings.storage_dir)
    with session_scope(settings.database_url) as session:
        done = heatmaps.find(session, image_id, version_id)
        if done is not None and heatmaps.is_stored(done, storage):
            return "already done"
        image = session.get(Image, image_id)
        version = session.get(ModelVersion, version_id)
        if image is None or image.job_id != job_id or version is None:
            return "image or model version gone"
        key = image.storage_key
    try:
        predictor = load_predictor(settings, version)
        if not key:
            raise ImageError("no stored file for this image")
        path = storage.path(key)
        image_u8 = load_u8(path, predictor.spec, predictor.max_pixels)  # exactly the served input
        gray = gradcam.display_gray(path, predictor.max_pixels)
    except (CheckpointError, ImageError, StorageError, OSError) as e:
        with session_scope(settings.database_url) as session:
            heatmaps.mark_failed(session, job_id, image_id, version_id, str(e))
        return f"failed: {e}"
    heat = gradcam.heatmap(predictor.model, image_u8, predictor.spec, predictor.device)
    overlay = gradcam.png_bytes(gradcam.overlay(heat, gray.size))
    composite = gradcam.png_bytes(gradcam.composite(gray, heat))
    with session_scope(settings.database_url) as session:
        heatmaps.mark_done(session, storage, job_id, image_id, version_id, overlay, composite)
    return "done"


def request_positive(settings: Settings, job_id: str, image_ids: list[int],
                     send: Callable[[str, int, int], None]) -> int:
    """With HEATMAPS_ABOVE_THRESHOLD on, ask for the heatmaps of the images of a classified chunk that the model
    called positive and send their tasks; return how many were sent."""
    if not settings.heatmaps_above_threshold or not image_ids:
        return 0
    storage = Storage(settings.storage_dir)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        version = session.get(ModelVersion, job.model_version_id) if job and job.model_version_id else None
        if version is None:
            return 0
        try:
            positive_class = load_predictor(settings, version).ckpt.positive_class  # cached by the chunk
        except CheckpointError:
            return 0
        positive = heatmaps.positive_images(session, job_id, version.id, image_ids, positive_class)
        todo = heatmaps.request_many(session, job_id, version.id, positive, storage)
    for image_id in todo:
        send(job_id, image_id, version.id)
    return len(todo)
