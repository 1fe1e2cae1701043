"""Framing ("trim"): the uniform black or white bands at an X-ray's edges cropped before the network, on real X-rays
with the audit's margins, frames inside frames, blank images, the map shrunk back into the box, and the option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fracture.ml.gradcam import heatmap
from fracture.ml.inference import Predictor
from fracture.ml.preprocess import (
    PreprocessSpec,
    content_boxes,
    crop_boxes,
    decode_gray,
    framed,
    normalize,
    square,
    to_uint8_tensor,
    uncrop_boxes,
)
from fracture.schedule_params import RecipeError, check_recipe
from trainer.acquisition import gamma, margin

RELEASE = Path(__file__).resolve().parent.parent / "fracture" / "release" / "model.pt"
TRIM = PreprocessSpec(framing="trim")


@pytest.fixture(scope="module")
def xrays(sample_images: list[Path]) -> list[Image.Image]:
    return [decode_gray(p, 512) for p in sample_images[:8]]


def u8(im: Image.Image, size: int = 128) -> torch.Tensor:
    return to_uint8_tensor(square(im, size))[None]


def test_trim_gives_a_margined_xray_nearly_the_input_of_the_xray_itself(xrays: list[Image.Image]) -> None:
    ratios = []
    for im in xrays:
        x = u8(im)
        for change in (margin(0.05), margin(0.10), margin(0.05, 255), margin(0.12, 0, (0.8, -0.5))):
            y = u8(change(im))
            without = float((normalize(x, PreprocessSpec()) - normalize(y, PreprocessSpec())).abs().mean())
            trimmed = float((normalize(x, TRIM) - normalize(y, TRIM)).abs().mean())
            ratios.append(trimmed / without)
    # Not zero: the band's edge is blended by the resize, and the crop lands on whole pixels of 128.
    assert np.median(ratios) < 0.25 and max(ratios) < 0.6, ratios


def test_frames_inside_frames_blank_images_and_unframed_images() -> None:
    img = torch.full((1, 1, 100, 100), 120, dtype=torch.uint8)
    img[..., 40:60, 30:70] = 200  # content that is neither black nor white
    img[..., :, :10] = 0  # a black band on the left
    img[..., 90:, :] = 255  # a white band at the bottom
    assert content_boxes(img)[0].tolist() == [0, 90, 10, 100]
    # A black padding around a white band around the X-ray: cropped one frame per round.
    nested = torch.zeros((1, 1, 100, 100), dtype=torch.uint8)
    nested[..., 8:92, 8:92] = 255
    nested[..., 14:86, 14:86] = 120
    assert content_boxes(nested)[0].tolist() == [14, 86, 14, 86]
    assert content_boxes(nested, rounds=1)[0].tolist() == [8, 92, 8, 92]
    # A few stray bright pixels (a marker's dot, JPEG ringing) do not stop a black band from being the frame's.
    stray = img.clone()
    stray[..., 50, 2] = 255
    stray[..., 20, 5] = 255
    assert content_boxes(stray)[0].tolist() == [0, 90, 10, 100]
    # A blank image keeps its middle, never less; an unframed one is left whole, in the same batch.
    blank = torch.zeros((1, 1, 100, 100), dtype=torch.uint8)
    noise = torch.randint(30, 220, (1, 1, 100, 100), dtype=torch.uint8)
    boxes = content_boxes(torch.cat([blank, noise]))
    assert boxes.tolist() == [[40, 60, 40, 60], [0, 100, 0, 100]]
    assert torch.equal(framed(noise, TRIM), noise) and torch.equal(framed(img, PreprocessSpec()), img)


def test_crop_and_uncrop_put_a_map_back_into_its_box() -> None:
    img = torch.full((2, 1, 64, 64), 100, dtype=torch.uint8)
    img[0, :, :16] = 0
    boxes = content_boxes(img)
    assert boxes.tolist() == [[16, 64, 0, 64], [0, 64, 0, 64]]
    cropped = crop_boxes(img, boxes)
    assert cropped.shape == img.shape and int(cropped.min()) == 100  # the band is gone, stretched over 64 rows
    back = uncrop_boxes(torch.ones(2, 64, 64), boxes)
    assert float(back[0, :16].abs().max()) == 0.0 and torch.allclose(back[0, 16:], torch.ones(48, 64))
    assert torch.equal(back[1], torch.ones(64, 64))


def test_a_trimming_checkpoint_maps_no_evidence_onto_the_frame(xrays: list[Image.Image]) -> None:
    predictor = Predictor.from_file(RELEASE, device=torch.device("cpu"))
    spec = PreprocessSpec(**{**predictor.spec.to_dict(), "framing": "trim"})  # type: ignore[arg-type]
    image = u8(margin(0.10)(xrays[0]))[0]
    heat = heatmap(predictor.model, image, spec)
    top, bottom, left, right = content_boxes(image[None])[0].tolist()
    assert heat.shape == (128, 128) and (top, left) >= (12, 12)
    assert float(heat[:top].max()) == 0.0 and float(heat[:, right:].max()) == 0.0
    assert float(heat[top:bottom, left:right].max()) > 0.0


def test_the_option_is_saved_checked_and_defaults_to_none() -> None:
    old = TRIM.to_dict()
    assert PreprocessSpec.from_dict(old).framing == "trim"
    del old["framing"]  # a checkpoint written before the option
    assert PreprocessSpec.from_dict(old).framing == "none"
    with pytest.raises(ValueError, match="framing"):
        PreprocessSpec(framing="pad")
    assert check_recipe({"framing": "trim"}) == {"framing": "trim"}
    with pytest.raises(RecipeError, match="framing must be one of none, trim"):
        check_recipe({"framing": "crop"})


def test_the_shipped_framing_candidate_holds_its_answers_where_the_release_does_not(
        xrays: list[Image.Image]) -> None:
    """robust-3 (trim + equalize) against release-1 on real X-rays under a 10% black margin, a white margin and
    gamma 0.5: its served probabilities move much less."""
    shipped = RELEASE.parent / "robust-framing" / "model.pt"
    moved: dict[str, float] = {}
    for name, path in (("release-1", RELEASE), ("robust-3", shipped)):
        predictor = Predictor.from_file(path, device=torch.device("cpu"))
        base = predictor.probabilities(torch.cat([u8(im, predictor.spec.image_size) for im in xrays]))
        shifts = []
        for change in (margin(0.10), margin(0.05, 255), gamma(0.5)):
            changed = torch.cat([u8(change(im), predictor.spec.image_size) for im in xrays])
            shifts.append(np.abs(predictor.probabilities(changed) - base))
        moved[name] = float(np.mean(shifts))
    assert moved["robust-3"] < 0.5 * moved["release-1"], moved
