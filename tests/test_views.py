"""The network as served: test-time views (a rotated or mirrored upload gets the same answer), folded batch norm."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fracture.config import get_settings
from fracture.ml.checkpoint import load_checkpoint, read_payload
from fracture.ml.inference import Predictor
from fracture.ml.net import fold_batchnorm
from fracture.ml.preprocess import forward_views, load_u8, normalize, views_of

# The 8 rotations and mirrorings of a picture, as a user's export tool might apply them.
DIHEDRAL = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
            Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE]


def _variants(path: Path) -> list[bytes]:
    out = []
    with Image.open(path) as im:
        im = im.convert("L")
        im.thumbnail((480, 480))  # the dataset's PNGs run to 7 MP; a smaller copy keeps the test quick
        for t in DIHEDRAL:
            buf = io.BytesIO()
            (im if t is None else im.transpose(t)).save(buf, format="PNG", compress_level=1)  # lossless
            out.append(buf.getvalue())
    return out


def _spread(predictor: Predictor, images: list[Path]) -> np.ndarray:
    """Per image, the largest difference in probability between its 8 orientations."""
    spreads = []
    for path in images:
        probs = [p.probability for p in predictor.predict(_variants(path))]
        assert all(p is not None for p in probs)
        spreads.append(max(probs) - min(probs))  # type: ignore[type-var,operator]
    return np.array(spreads)


def test_release_model_answers_the_same_for_every_orientation_of_real_xrays(sample_images: list[Path]) -> None:
    settings = get_settings({})
    assert settings.seed_model is not None
    ckpt = load_checkpoint(settings.seed_model)
    assert ckpt.preprocess.views == "dihedral"
    images = sample_images[:6]
    served = _spread(Predictor(ckpt, torch.device("cpu")), images)
    assert served.max() < 2e-3, served

    # The same weights served on one view do change their answer with the orientation: the check above can fail.
    one_view = dataclasses.replace(ckpt, preprocess=dataclasses.replace(ckpt.preprocess, views="identity"))
    single = _spread(Predictor(one_view, torch.device("cpu")), images)
    assert single.max() > 1e-2, single


def test_forward_views_averages_the_logits_of_the_eight_views() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1),
                                torch.nn.Flatten(0)).eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.inference_mode():
        views = views_of(x, "dihedral")
        assert len(views) == 8 and all(v.shape == x.shape for v in views)
        by_hand = torch.stack([model(v) for v in views]).mean(0)
        torch.testing.assert_close(forward_views(model, x, "dihedral"), by_hand)
        torch.testing.assert_close(forward_views(model, x, "identity"), model(x))
        # The 8 views are the 8 distinct rotations/mirrorings of a generic image.
        assert len({tuple(v[0].flatten().tolist()) for v in views}) == 8
        assert torch.equal(views[1][0, 0], x[0, 0].rot90(1)) and torch.equal(views[4][0, 0], x[0, 0].flip(1))


def test_a_checkpoint_written_before_views_existed_is_served_on_one_view(tiny_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    payload = read_payload(tiny_checkpoint)
    payload["preprocess"].pop("views", None)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert load_checkpoint(old).preprocess.views == "identity"


def test_folded_batchnorm_serves_the_same_logits_as_the_trained_network(sample_images: list[Path]) -> None:
    settings = get_settings({})
    assert settings.seed_model is not None
    ckpt = load_checkpoint(settings.seed_model)
    folded = fold_batchnorm(ckpt.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ckpt.model.modules()), "the original is left as it was"
    x = normalize(torch.stack([load_u8(p, ckpt.preprocess) for p in sample_images[:16]]), ckpt.preprocess)
    with torch.inference_mode():
        trained, served = ckpt.model(x), folded.to(memory_format=torch.channels_last)(x)
    assert trained.abs().max() > 1.0  # real, confident logits, not a degenerate network
    torch.testing.assert_close(served, trained, atol=1e-4, rtol=1e-4)
