"""Heatmaps: Grad-CAM of the served release model on real X-rays, consistent with its test-time views, on one
absolute scale (a confident negative nearly transparent, a confident positive showing its evidence), and the heatmap
endpoint through a real Celery worker (202 while computing, the PNG after, access, download, errors, the legend)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from flask.testing import FlaskClient
from harness import WorkerFactory, wait_for
from installation import REPO_ROOT, add_user, create_job, job_state, new_installation
from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy import select
from web_client import make_client

from fracture import heatmaps, jobs
from fracture.config import get_settings
from fracture.db import dispose_engines, session_scope
from fracture.ml import gradcam
from fracture.ml.inference import Predictor
from fracture.ml.preprocess import load_u8, normalize
from fracture.models import Heatmap, HeatmapStatus, Image, Job
from fracture.queue import INFERENCE_QUEUE, INTERACTIVE_QUEUE, enqueue_job, make_app, queued_messages, send_heatmap
from fracture.storage import Storage
from worker.classify import _predictors
from worker.heatmaps import make_heatmap

RELEASE = REPO_ROOT / "fracture" / "release" / "model.pt"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The release checkpoint as the worker serves it (batch norm folded, channels_last), on the CPU."""
    return Predictor.from_file(RELEASE, torch.device("cpu"))


@pytest.fixture(scope="module")
def called(predictor: Predictor, sample_images: list[Path]) -> dict[str, list[Path]]:
    """Real X-rays of the sample that the release model calls fractured (labelled so) and not fractured."""
    out: dict[str, list[Path]] = {"fractured": [], "not fractured": []}
    for path in sample_images:
        label = path.parent.name
        if len(out[label]) >= 3:
            continue
        try:
            u8 = load_u8(path, predictor.spec)
        except ValueError:
            continue  # the dataset's truncated files
        if predictor.ckpt.label(float(predictor.probabilities(u8[None])[0])) == label:
            out[label].append(path)
    assert len(out["fractured"]) >= 2 and out["not fractured"], out
    return out


def test_heatmaps_of_two_fractured_xrays_come_from_the_model_and_differ(
    predictor: Predictor, called: dict[str, list[Path]],
) -> None:
    maps = []
    for path in called["fractured"][:2]:
        heat = gradcam.heatmap(predictor.model, load_u8(path, predictor.spec), predictor.spec)
        assert heat.shape == (128, 128) and heat.dtype == np.float32 and heat.min() >= 0
        hot = float((gradcam.shown(heat) > 0.25).mean())
        assert 0.01 < hot < 0.8, hot  # a region, neither a dot nor the whole image
        maps.append(heat)
    corr = float(np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1])
    assert corr < 0.9, corr


def test_the_map_is_in_logit_units_and_adds_up_to_the_served_logit(
    predictor: Predictor, called: dict[str, list[Path]],
) -> None:
    # On FracNet's last block the signed map is the class-activation map: its mean over the image is the served
    # logit less the head's bias, which is what lets one fixed scale (in logits) serve every image.
    head = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    bias = float(head.bias.detach())
    for path in [*called["fractured"][:2], called["not fractured"][0]]:
        u8 = load_u8(path, predictor.spec)
        x = normalize(u8.unsqueeze(0), predictor.spec)
        signed = gradcam.layer_maps(predictor.model, x, predictor.spec.views,
                                    gradcam.target_layer(predictor.model)).mean(0)
        logit = float(torch.logit(torch.tensor(predictor.probabilities(u8[None])[0]).double()))
        assert float(signed.mean()) + bias == pytest.approx(logit, abs=0.05)


@pytest.fixture(scope="module")
def confident(predictor: Predictor, sample_images: list[Path]) -> dict[str, Path]:
    """A real X-ray of the sample the release model calls not fractured with p < 0.01 (labelled so), and the one it
    calls fractured most confidently (labelled so, p > 0.99)."""
    negative, positive, top = None, None, 0.0
    for path in sample_images:
        try:
            p = float(predictor.probabilities(load_u8(path, predictor.spec)[None])[0])
        except ValueError:
            continue  # the dataset's truncated files
        if path.parent.name == "not fractured" and p < 0.01 and negative is None:
            negative = path
        if path.parent.name == "fractured" and p > max(top, 0.99):
            positive, top = path, p
    assert negative is not None and positive is not None, (negative, positive)
    return {"negative": negative, "positive": positive}


def test_a_confident_negative_is_nearly_transparent_and_a_confident_positive_shows_its_evidence(
    predictor: Predictor, confident: dict[str, Path],
) -> None:
    size = (256, 256)

    def alpha(heat: np.ndarray) -> np.ndarray:
        return np.asarray(gradcam.overlay(heat, size), dtype=np.float32)[..., 3] / 255

    negative = gradcam.heatmap(predictor.model, load_u8(confident["negative"], predictor.spec), predictor.spec)
    positive = gradcam.heatmap(predictor.model, load_u8(confident["positive"], predictor.spec), predictor.spec)
    neg, pos = alpha(negative), alpha(positive)
    assert pos.max() > 0.6 and pos.mean() > 0.05, (pos.max(), pos.mean())  # the positive's evidence is shown
    assert neg.max() < 0.25, neg.max()  # nothing in the negative reads as a finding
    assert neg.mean() < pos.mean() / 10, (neg.mean(), pos.mean())
    # What the overlay did before: the block before the last one, scaled to its own maximum, showed the negative a
    # full-strength hotspot (the bright patch beside the side marker of issue 20).
    before = gradcam.heatmap(predictor.model, load_u8(confident["negative"], predictor.spec), predictor.spec, block=-2)
    assert before.max() > 0
    assert alpha(before / before.max() * gradcam.EVIDENCE_SCALE).max() > 0.8


def test_the_map_of_a_mirrored_or_turned_xray_is_the_mirrored_or_turned_map(
    predictor: Predictor, called: dict[str, list[Path]],
) -> None:
    path = called["fractured"][0]
    with PILImage.open(path) as im:
        gray = im.convert("L")
    heat = gradcam.heatmap(predictor.model, load_u8(path, predictor.spec), predictor.spec)

    def map_of(image: PILImage.Image) -> np.ndarray:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return gradcam.heatmap(predictor.model, load_u8(buf.getvalue(), predictor.spec), predictor.spec)

    shown = gradcam.shown
    mirrored = map_of(ImageOps.mirror(gray))
    np.testing.assert_allclose(shown(mirrored), shown(heat)[:, ::-1], atol=0.03)
    turned = map_of(gray.transpose(PILImage.Transpose.ROTATE_90))  # counter-clockwise, as np.rot90
    np.testing.assert_allclose(shown(turned), np.rot90(shown(heat)), atol=0.03)
    # With one view only (what a map of the identity view alone would be), the symmetry is lost.
    single = dataclasses.replace(predictor.spec, views="identity")
    one = gradcam.heatmap(predictor.model, load_u8(path, single), single)
    assert np.abs(shown(one) - shown(heat)).max() > 0.1


def test_the_overlay_and_composite_keep_the_image_aspect(
    predictor: Predictor, confident: dict[str, Path],
) -> None:
    heat = gradcam.heatmap(predictor.model, load_u8(confident["positive"], predictor.spec), predictor.spec)
    wide = PILImage.new("L", (300, 120), 128)
    overlay = gradcam.overlay(heat, wide.size)
    assert overlay.mode == "RGBA" and overlay.size == (300, 120)
    assert np.asarray(overlay)[..., 3].max() > 150  # the evidence, in strong colour
    none = gradcam.heatmap(predictor.model, load_u8(confident["negative"], predictor.spec), predictor.spec)
    assert np.asarray(gradcam.overlay(none, wide.size))[..., 3].min() == 0  # transparent where there is none
    composite = gradcam.composite(wide, heat)
    assert composite.mode == "RGB" and composite.size == (300, 120)


# ---------------------------------------------------------------- through a real worker and the API


@pytest.fixture
def served(tmp_path: Path, called: dict[str, list[Path]]) -> Iterator[tuple[dict[str, str], str, list[Path]]]:
    """A release-model installation with HEATMAPS_ABOVE_THRESHOLD on, a real worker, and a finished job of two
    X-rays called fractured, one called not fractured and a file refused at ingest."""
    env = {**new_installation(tmp_path / "home", RELEASE), "HEATMAPS_ABOVE_THRESHOLD": "1"}
    files = [*called["fractured"][:2], called["not fractured"][0]]
    job_id = create_job(env, files, refused={"notes.txt": "not an image"})
    workers = WorkerFactory(tmp_path / "logs")
    try:
        worker = workers.start(env)
        settings = get_settings(env)
        enqueue_job(make_app(settings), settings, job_id)
        wait_for(lambda: job_state(env, job_id)["status"] == "done", 120, f"job {job_id} to finish")
        yield env, job_id, files
        assert worker.alive(), worker.log_text()
    finally:
        workers.stop_all()
        dispose_engines()


def _images(env: dict[str, str], job_id: str) -> list[Image]:
    with session_scope(get_settings(env).database_url) as session:
        return list(session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.seq)))


def _heatmaps(env: dict[str, str]) -> dict[int, str]:
    with session_scope(get_settings(env).database_url) as session:
        return {h.image_id: h.status for h in session.scalars(select(Heatmap))}


def _status(client: FlaskClient, url: str) -> int:
    response = client.get(url)
    response.close()
    return response.status_code


def test_heatmap_endpoint_through_a_real_worker(
    served: tuple[dict[str, str], str, list[Path]], predictor: Predictor,
) -> None:
    env, job_id, files = served
    settings = get_settings(env)
    first, second, negative, refused = _images(env, job_id)
    # The setting asked for the heatmaps of the two images called fractured, and of no other.
    wait_for(lambda: _heatmaps(env) == {first.id: HeatmapStatus.DONE, second.id: HeatmapStatus.DONE}, 60,
             "the heatmaps of the positive images")

    client = make_client(settings)
    url = f"/api/jobs/{job_id}/images/{negative.id}/heatmap.png"
    # The broker is down: 503 with a reason, and nothing is left pending.
    down = make_client(dataclasses.replace(settings, broker_url="redis://127.0.0.1:9/0"))
    response = down.get(url)
    assert response.status_code == 503 and "broker" in response.get_json()["error"]
    assert negative.id not in _heatmaps(env)

    response = client.get(url)  # on request: the first call sends the task
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json() == {"status": "pending"} and response.headers["Retry-After"]
    wait_for(lambda: _status(client, url) == 200, 60, "the heatmap")
    response = client.get(url)
    assert response.mimetype == "image/png" and "public" not in response.headers["Cache-Control"]
    overlay = PILImage.open(io.BytesIO(response.data))
    response.close()
    with PILImage.open(files[2]) as original:
        shown = ImageOps.exif_transpose(original)
        shown.thumbnail((gradcam.MAX_SIDE, gradcam.MAX_SIDE))
        size = shown.size
    assert overlay.mode == "RGBA" and overlay.size == size  # the image's own aspect, not the network's square

    # The stored overlay is the served model's map of this image.
    heat = gradcam.heatmap(predictor.model, load_u8(files[2], predictor.spec), predictor.spec)
    expected = np.asarray(gradcam.overlay(heat, size), dtype=np.int16)
    assert np.abs(np.asarray(overlay, dtype=np.int16) - expected).mean() < 1.0

    # The viewer says what the colour means, next to the overlay's controls.
    page = client.get(f"/jobs/{job_id}/images/{negative.id}")
    html = page.get_data(as_text=True)
    page.close()
    assert page.status_code == 200 and 'id="heatmap-legend"' in html
    assert "evidence for fracture, on one scale for every image; transparent: none" in " ".join(html.split())

    done = client.get(f"/api/jobs/{job_id}/images/{first.id}/heatmap.png")
    assert done.status_code == 200 and done.data != response.data
    done.close()
    download = client.get(f"{url}?download=1")
    assert download.status_code == 200 and download.mimetype == "image/png"
    stem = Path(files[2].name).stem
    assert download.headers["Content-Disposition"].startswith("attachment;") and stem in \
        download.headers["Content-Disposition"]
    assert PILImage.open(io.BytesIO(download.data)).size == size
    download.close()

    # Errors are JSON like the rest of the API: an image without a result, an image not in the job.
    response = client.get(f"/api/jobs/{job_id}/images/{refused.id}/heatmap.png")
    assert response.status_code == 422 and "not an image" in response.get_json()["error"]
    response = client.get(f"/api/jobs/{job_id}/images/{refused.id + 1000}/heatmap.png")
    assert response.status_code == 404 and response.get_json()["error"]

    # Someone else's job answers like a missing one.
    other = add_user(env, "someone")
    stranger = make_client(settings, as_user=None, token=other["token"])
    for query in ("", "?download=1"):
        response = stranger.get(f"{url}{query}")
        assert response.status_code == 404 and response.get_json()["error"], response.get_data(as_text=True)


def test_a_heatmap_someone_asks_for_does_not_wait_behind_the_queued_chunks(
    fracture_env: dict[str, str], redis_url: str, sample_images: list[Path], celery_worker_proc: WorkerFactory,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "CHUNK_SIZE": "2"}
    settings = get_settings(env)
    app = make_app(settings)
    job_id = create_job(env, sample_images[:6])
    version_id = int(env["FRACTURE_MODEL_VERSION_ID"])
    bulk, asked = _images(env, job_id)[:2]
    with session_scope(settings.database_url) as session:  # two images classified, the rest still to come
        jobs.record_outcomes(session, job_id, version_id, [jobs.Outcome(bulk.id, "fractured", 0.9),
                                                           jobs.Outcome(asked.id, "fractured", 0.8)])
        assert heatmaps.request_many(session, job_id, version_id, [bulk.id], Storage(settings.storage_dir)) == \
            [bulk.id]
        # Behind the chunks it may wait for whole jobs: two minutes later it is not taken for lost.
        assert heatmaps.request_many(session, job_id, version_id, [bulk.id], Storage(settings.storage_dir),
                                     now=datetime.now(UTC) + timedelta(minutes=2)) == []
    enqueue_job(app, settings, job_id)  # no worker yet: the other four wait in two chunks
    send_heatmap(app, job_id, bulk.id, version_id, interactive=False)  # HEATMAPS_ABOVE_THRESHOLD: behind them
    assert (queued_messages(app, INFERENCE_QUEUE), queued_messages(app, INTERACTIVE_QUEUE)) == (3, 0)

    client = make_client(settings)
    for image in (asked, bulk, bulk):  # a person asks: queued apart; the bulk one jumps the queue, once
        response = client.get(f"/api/jobs/{job_id}/images/{image.id}/heatmap.png")
        assert response.status_code == 202, response.get_data(as_text=True)
    assert (queued_messages(app, INFERENCE_QUEUE), queued_messages(app, INTERACTIVE_QUEUE)) == (3, 2)

    # A worker of the interactive queue alone makes both while every chunk still waits.
    celery_worker_proc.start(env, queues=INTERACTIVE_QUEUE)
    wait_for(lambda: _heatmaps(env) == {bulk.id: HeatmapStatus.DONE, asked.id: HeatmapStatus.DONE}, 60,
             "the heatmaps asked for")
    assert queued_messages(app, INFERENCE_QUEUE) == 3 and job_state(env, job_id)["processed"] == 2


# ---------------------------------------------------------------- the state of a heatmap, and the task's body


def test_lost_and_failed_requests_are_sent_again_and_the_task_body_records_both_ends(
    fracture_env: dict[str, str], sample_images: list[Path],
) -> None:
    settings = get_settings(fracture_env)
    storage = Storage(settings.storage_dir)
    job_id = create_job(fracture_env, sample_images[:3])
    version_id = int(fracture_env["FRACTURE_MODEL_VERSION_ID"])
    good, broken, unclassified = _images(fracture_env, job_id)
    with session_scope(settings.database_url) as session:
        jobs.record_outcomes(session, job_id, version_id, [jobs.Outcome(good.id, "fractured", 0.9),
                                                           jobs.Outcome(broken.id, "fractured", 0.8)])
    (settings.storage_dir / str(broken.storage_key)).write_bytes(b"no longer an image")

    later = datetime.now(UTC) + heatmaps.RESEND_AFTER + timedelta(seconds=1)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert heatmaps.request(session, job, good.id, storage).send  # first ask: sent
        assert not heatmaps.request(session, job, good.id, storage).send  # pending: not twice
        soon = datetime.now(UTC) + heatmaps.RESEND_INTERACTIVE_AFTER
        assert not heatmaps.request(session, job, good.id, storage, now=soon - timedelta(seconds=5)).send
        assert heatmaps.request(session, job, good.id, storage, now=soon + timedelta(seconds=1)).send  # lost
        assert heatmaps.request(session, job, good.id, storage, now=later).send  # lost: sent again
        with pytest.raises(heatmaps.HeatmapRefused) as refused:
            heatmaps.request(session, job, unclassified.id, storage)
        assert not refused.value.final
        assert heatmaps.request(session, job, broken.id, storage).send

    _predictors.clear()  # a model cached under the same version id by another installation's test
    assert make_heatmap(settings, job_id, good.id, version_id) == "done"
    assert make_heatmap(settings, job_id, good.id, version_id) == "already done"
    assert make_heatmap(settings, job_id, broken.id, version_id).startswith("failed")
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        done = heatmaps.request(session, job, good.id, storage)
        assert done.heatmap.status == HeatmapStatus.DONE and not done.send
        assert storage.exists(str(done.heatmap.storage_key))
        assert storage.exists(heatmaps.composite_key(str(done.heatmap.storage_key)))
        failed = heatmaps.request(session, job, broken.id, storage)
        assert failed.heatmap.status == HeatmapStatus.FAILED and not failed.send
        assert "image" in str(failed.heatmap.error)
        assert heatmaps.request(session, job, broken.id, storage, now=later + timedelta(minutes=1)).send
