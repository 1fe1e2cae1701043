"""The out-of-distribution detector itself: the shipped model's flags on made-up non-X-rays and on the first
dataset's unseen (grouped test) X-rays, the detector's storage in a checkpoint, and its calibration rule.

The product side (worker results, CSV, API, job page, `fracture classify` against the worker) is in
test_ood_flag.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import REPO_ROOT, materialize
from PIL import Image, ImageDraw

from fracture.ml import ood
from fracture.ml.checkpoint import load_checkpoint, read_payload
from fracture.ml.inference import Predictor

RELEASE = REPO_ROOT / "fracture" / "release" / "model.pt"


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def made_up_images() -> dict[str, bytes]:
    """Images that are no X-ray: noise, blank pages, a colour scene like a phone photo, a screenshot."""
    rng = np.random.default_rng(7)
    out = {"noise-rgb": _png(Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))),
           "noise-gray": _png(Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8))),
           "blank-white": _png(Image.new("L", (256, 256), 255)),
           "blank-black": _png(Image.new("L", (256, 256), 0)),
           "blank-gray": _png(Image.new("RGB", (320, 240), (128, 128, 128)))}
    yy = np.linspace(0, 1, 300)[:, None, None]
    sky = np.clip(np.concatenate([80 + 100 * yy, 120 + 80 * yy, 220 - 120 * yy], 2) * np.ones((1, 400, 1)), 0, 255)
    photo = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((250, 30, 330, 110), fill=(250, 220, 90))
    draw.rectangle((0, 200, 400, 300), fill=(60, 140, 50))
    draw.polygon([(40, 200), (120, 90), (200, 200)], fill=(110, 100, 90))
    out["photo"] = _png(photo)
    shot = Image.new("RGB", (400, 300), (250, 250, 250))
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, 0, 400, 30), fill=(40, 60, 120))
    for k in range(12):
        draw.text((12, 40 + 20 * k), f"Worklist row {k}: wrist, 2 views, report pending", fill=(20, 20, 20))
    out["screenshot"] = _png(shot)
    return out


@pytest.fixture(scope="module")
def release() -> Predictor:
    return Predictor.from_file(RELEASE, device=torch.device("cpu"))


def test_the_release_model_flags_every_made_up_non_xray(release: Predictor) -> None:
    assert release.detector is not None
    images = made_up_images()
    predictions = list(release.predict(list(images.values())))
    assert [p.error for p in predictions] == [None] * len(images)
    flagged = {name: p.in_distribution is False for name, p in zip(images, predictions, strict=True)}
    assert all(flagged.values()), flagged
    assert min(p.ood_score for p in predictions if p.ood_score is not None) > 1.0


def test_the_release_model_does_not_flag_the_first_datasets_unseen_xrays(
        release: Predictor, dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The grouped test split the release was evaluated on (no copy of a training image): about 5% flagged,
    as calibrated on val; far fewer than the made-up images or the second site's X-rays."""
    from trainer.recalibrate import checkpoint_data

    root = materialize(dataset_root, tmp_path_factory.mktemp("full"), per_class=100000)
    payload = read_payload(RELEASE)
    data = checkpoint_data(payload, release.spec, root)  # the release's own split, its fingerprint checked
    rows = data.split_index["test"]
    assert len(rows) == payload["metrics"]["test"]["n"]
    scores = np.concatenate([release.scores(data.images[rows[i:i + 64]])[1] for i in range(0, len(rows), 64)])
    flagged = float(np.mean(scores >= 1))
    # The card's own figure (computed in the trainer's batches: a score at the threshold may fall either side).
    assert flagged == pytest.approx(payload["metrics"]["test"]["ood_flagged"], abs=2.5 / len(rows))
    assert flagged <= 0.06


def test_the_detector_is_plain_tensors_in_the_checkpoint_and_old_checkpoints_serve_without_it(
        tiny_checkpoint: Path, xray: Image.Image) -> None:
    payload = torch.load(RELEASE, map_location="cpu", weights_only=True)  # no code runs on load
    stored = payload["ood_detector"]
    assert stored["kind"] == ood.KIND and isinstance(stored["precision"], torch.Tensor)
    assert load_checkpoint(RELEASE).detector is not None
    old = Predictor.from_file(tiny_checkpoint, device=torch.device("cpu"))
    assert old.ckpt.detector is None and old.detector is None
    prediction = next(old.predict([_png(xray)]))
    assert prediction.probability is not None and prediction.ood_score is None and prediction.in_distribution is None


def test_the_detector_flags_about_five_percent_of_new_images_like_its_training_data() -> None:
    rng = np.random.default_rng(0)
    dim = 20
    labels = rng.integers(0, 2, 3000)
    means = np.stack([np.zeros(dim), np.full(dim, 3.0)])
    cov = np.diag(np.linspace(0.5, 2.0, dim))

    def draw(n: int, shift: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return means[y] + rng.multivariate_normal(np.zeros(dim), cov, n) + shift, y

    train, labels = draw(3000)
    val, _ = draw(500)
    detector = ood.fit(train, labels, val)
    fresh, _ = draw(20000)
    assert ood.flagged_share(detector, fresh) == pytest.approx(0.05, abs=0.015)
    far, _ = draw(500, shift=np.tile([4.0, -4.0], dim // 2))  # away from both class means
    assert ood.flagged_share(detector, far) > 0.95
    roundtrip = ood.Detector.from_payload(detector.to_payload())
    assert roundtrip is not None
    assert torch.allclose(roundtrip.score(torch.tensor(fresh[:50], dtype=torch.float32)),
                          detector.score(torch.tensor(fresh[:50], dtype=torch.float32)))


def test_conformal_threshold_is_the_documented_order_statistic() -> None:
    distances = np.arange(1.0, 493.0)  # 492 calibration images: the ceil(493 * 0.95) = 469th smallest
    assert ood.conformal_threshold(distances[::-1]) == 469.0
    assert ood.conformal_threshold(np.arange(1.0, 11.0)) == 10.0  # too few images: the largest
    assert ood.conformal_threshold(np.arange(1.0, 101.0), 0.9) == 91.0
