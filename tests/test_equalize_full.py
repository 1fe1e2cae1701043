"""`--intensity equalize-full`: the grey levels equalised on the decoded image, before the resize to the input, in
every path an image takes (training's decode, the Pillow serving path, the torchvision/nvJPEG path, the audit), on
real X-rays."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import image_files, materialize
from PIL import Image

from fracture.ml.inference import Predictor
from fracture.ml.preprocess import PreprocessSpec, decode_gray, fit_input, load_u8, normalize, to_uint8_tensor
from fracture.schedule_params import check_recipe
from trainer.acquisition import gamma
from trainer.decoded_images import decode_all

RELEASE = Path(__file__).resolve().parent.parent / "fracture" / "release" / "model.pt"
CPU = torch.device("cpu")
EQ, EQ_FULL = PreprocessSpec(intensity="equalize"), PreprocessSpec(intensity="equalize-full")


@pytest.fixture(scope="module")
def xrays(sample_images: list[Path]) -> list[Image.Image]:
    """Real X-rays of the first source at their own resolution (up to 512 px decoded, as the audit does)."""
    return [decode_gray(p, 512) for p in sample_images[:12]]


@pytest.fixture(scope="module")
def jpegs(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = materialize(dataset_root, tmp_path_factory.mktemp("jpegs"), per_class=12)
    found = [p for p in image_files(folder) if p.read_bytes()[:3] == b"\xff\xd8\xff"]
    assert len(found) >= 20
    return found[:20]


def _input_change(im: Image.Image, changed: Image.Image, spec: PreprocessSpec) -> float:
    a = normalize(to_uint8_tensor(fit_input(im, spec))[None], spec)
    b = normalize(to_uint8_tensor(fit_input(changed, spec))[None], spec)
    return float((a - b).abs().mean())


def test_equalizing_before_the_resize_undoes_a_full_resolution_gamma_that_equalizing_after_cannot(
    xrays: list[Image.Image],
) -> None:
    ratios: dict[float, list[float]] = {}
    for g in (0.5, 0.7, 1.4, 2.0):
        for im in xrays:
            changed = gamma(g)(im)
            ratios.setdefault(g, []).append(_input_change(im, changed, EQ_FULL) / _input_change(im, changed, EQ))
    medians = {g: float(np.median(r)) for g, r in ratios.items()}
    print(f"\nequalize-full's input change over equalize's, median per gamma: {medians}")
    # Measured on 12 of the dataset's X-rays: 0.04, 0.00, 0.31, 0.48 (a brightening merges no grey levels, so the
    # full-resolution equalisation undoes it exactly; a darkening merges the darkest levels before the equalisation).
    assert medians[0.7] < 0.1 and medians[2.0] < 0.7
    assert float(np.median([r for rs in ratios.values() for r in rs])) < 0.4


def test_training_and_both_serving_paths_give_the_same_equalized_input(
    jpegs: list[Path], tmp_path: Path
) -> None:
    assert EQ_FULL.equalize_decoded and not EQ.equalize_decoded
    assert (EQ_FULL.decode_size, EQ.decode_size) == (512, 128)
    assert check_recipe({"intensity": "equalize-full"}) == {"intensity": "equalize-full"}
    pillow = Predictor.from_file(RELEASE, CPU, decoder="pillow")
    torchvision = Predictor.from_file(RELEASE, CPU, decoder="torchvision")
    plain_spec = pillow.spec
    spec = dataclasses.replace(plain_spec, intensity="equalize-full")
    pillow.spec = torchvision.spec = spec
    files = {str(i): p for i, p in enumerate(jpegs)}
    # Training decodes what the Pillow serving path decodes, bit for bit, into a cache of its own.
    index, images, errors = decode_all(files, spec, tmp_path / "cache")
    plain_index, plain, _ = decode_all(files, plain_spec, tmp_path / "cache")
    assert not errors and len(list((tmp_path / "cache").glob("decoded-*.pt"))) == 2
    served: dict[str, torch.Tensor] = {}
    for key, row in index.items():
        item = pillow._decode(files[key], thumbnail=True)
        assert not isinstance(item, str), item
        served[key], thumb = item
        assert torch.equal(images[row], served[key]) and torch.equal(images[row], load_u8(files[key], spec))
        assert float((images[row].float() - plain[plain_index[key]].float()).abs().mean()) > 5
        # The thumbnail a reader sees is the X-ray as it came, not its equalised input.
        shown = np.asarray(Image.open(io.BytesIO(thumb or b"")).convert("L"), dtype=np.float32)
        assert abs(shown.mean() - float(plain[plain_index[key]].float().mean())) < 12
    # The torchvision path (nvJPEG's on a GPU) equalises after its draft and before its resize, as Pillow does.
    pending = [(i, torchvision._read(files[str(i)])[0], None) for i in range(len(jpegs))]
    assert all(not isinstance(t, torch.Tensor | str) for _, t, _ in pending)  # left to the batched decode
    inputs, thumbs = torchvision._prepare(pending, thumbnails=True)  # type: ignore[arg-type]
    diffs = [float((served[str(i)].float() - t.float()).abs().mean()) for i, t in enumerate(inputs)
             if isinstance(t, torch.Tensor)]
    print(f"\ntorchvision against Pillow under equalize-full, mean abs input difference over {len(diffs)} JPEGs: "
          f"mean {np.mean(diffs):.2f}, max {max(diffs):.2f} grey levels")
    assert len(diffs) == len(jpegs) and all(thumbs)
    assert np.mean(diffs) < 2.0 and max(diffs) < 6.0
    a = [p.probability for p in pillow.predict(jpegs)]
    b = [p.probability for p in torchvision.predict(jpegs)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.05  # type: ignore[operator]
