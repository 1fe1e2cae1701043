"""`--intensity equalize-full`: the grey levels equalised on the decoded image, before the resize to the input, in
every path an image takes (training's decode, the Pillow serving path, the torchvision/nvJPEG path, the audit), on
real X-rays."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import image_files, materialize, small_training
from PIL import Image

from fracture.ml.checkpoint import load_checkpoint
from fracture.ml.inference import Predictor
from fracture.ml.preprocess import (
    PreprocessSpec,
    decode_gray,
    fit_input,
    load_u8,
    normalize,
    square,
    to_uint8_tensor,
)
from fracture.schedule_params import check_recipe
from trainer.acquisition import contrast, gamma, random_acquisition_geometry, window
from trainer.augmentation import AcquisitionChange
from trainer.decoded_images import decode_all
from trainer.prepared_data import AUDIT_SIZE, SOURCE_SCALE, needs_sources, prepare_data
from trainer.train import get_args_parser

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


def _draws(seed: int, n: int) -> list[Callable[[Image.Image], Image.Image]]:
    """The first n changes AcquisitionChange(seed) draws, drawn again from a generator of the same seed."""
    rng = np.random.default_rng(seed)
    return [random_acquisition_geometry(rng)[0] for _ in range(n)]


def test_acquisition_draws_act_on_the_decoded_image_before_the_equalisation(jpegs: list[Path]) -> None:
    """An equalize-full run's acquisition change acts on the decoded image (Prepared.sources), and the spec makes
    the input of the result: what a department's changed file becomes when served, not a change of the already
    equalised input."""
    xrays = [decode_gray(p, 512) for p in jpegs[:12]]
    side = 128 * SOURCE_SCALE
    sources = torch.stack([to_uint8_tensor(square(im, side)) for im in xrays])
    inputs = torch.stack([to_uint8_tensor(fit_input(im, EQ_FULL)) for im in xrays])
    changed = AcquisitionChange(7, EQ_FULL)(inputs, sources)
    expected = torch.stack([to_uint8_tensor(fit_input(draw(Image.fromarray(s[0].numpy())), EQ_FULL))
                            for draw, s in zip(_draws(7, len(xrays)), sources, strict=True)])
    assert changed.shape == inputs.shape and torch.equal(changed, expected)
    assert not torch.equal(changed, AcquisitionChange(7, EQ_FULL)(inputs))  # drawn on the inputs: another result
    with pytest.raises(ValueError, match="spec"):
        AcquisitionChange(7)(inputs, sources)
    # Against what serving makes of the changed full-resolution X-ray, the change drawn on the source lands much
    # nearer than the same change drawn on the equalised input, for the changes that merge or clip grey levels.
    for name, change in (("gamma 2.0", gamma(2.0)), ("window 40-215", window(40, 215)),
                         ("contrast x1.3", contrast(1.3))):
        near, far = [], []
        for im, src, x in zip(xrays, sources, inputs, strict=True):
            served = normalize(to_uint8_tensor(fit_input(change(im), EQ_FULL))[None], EQ_FULL)
            from_source = to_uint8_tensor(fit_input(change(Image.fromarray(src[0].numpy())), EQ_FULL))
            from_input = to_uint8_tensor(change(Image.fromarray(x[0].numpy())))
            near.append(float((normalize(from_source[None], EQ_FULL) - served).abs().mean()))
            far.append(float((normalize(from_input[None], EQ_FULL) - served).abs().mean()))
        print(f"\n{name}: mean input difference to served, drawn on sources {np.median(near):.3f}, "
              f"on inputs {np.median(far):.3f}")
        assert np.median(near) < 0.5 * np.median(far)


def test_a_dry_run_with_equalize_full_and_acquisition_keeps_the_decoded_sources(
    jpegs: list[Path], tmp_path: Path,
) -> None:
    files = {str(i): p for i, p in enumerate(jpegs[:6])}
    index, sources, errors = decode_all(files, EQ_FULL, tmp_path / "cache", source_size=256)
    assert not errors and sources.shape == (6, 1, 256, 256)
    for key, row in index.items():  # the decoded image squashed, not equalised
        assert torch.equal(sources[row], to_uint8_tensor(square(decode_gray(files[key], 512), 256)))
    assert needs_sources(EQ_FULL, "acquisition") and needs_sources(EQ_FULL, "acquisition-lossy")
    assert not needs_sources(EQ_FULL, "light") and not needs_sources(EQ, "acquisition")


def test_a_training_run_with_equalize_full_and_acquisition_draws_on_sources_and_audits_them(
    dataset_root: Path, tmp_path: Path,
) -> None:
    data = materialize(dataset_root, tmp_path / "ds", per_class=12)
    out = tmp_path / "run"
    # acquisition-lossy: the same family as acquisition (test_robustness.py runs that one), the lossy changes more
    # often; both draw on the decoded sources and select and fit the detector on acquisition-changed copies.
    small_training(data, out, "--dry-run", "--augment", "acquisition-lossy", "--intensity", "equalize-full")
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.meta["augment"] == "acquisition-lossy"
    assert ckpt.preprocess.intensity == "equalize-full" and ckpt.meta["ood_acquisition"] is True
    # The threshold is chosen on val and on the changed copy's images the detector lets through.
    assert ckpt.meta["metrics"]["threshold_on"].startswith("val and the images of an acquisition-changed copy")
    assert "chosen on val and the images of an acquisition-changed copy" in (out / "model_card.md").read_text()
    # The run's cache holds the inputs, the images as decoded that the split hashes (not equalised, at the one size
    # every run hashes at), and the decoded sources the changes were drawn on.
    cached = [torch.load(f, weights_only=True)["images"].shape[-1] for f in (out / "cache").glob("decoded-*.pt")]
    assert sorted(cached) == sorted([64, AUDIT_SIZE, 64 * SOURCE_SCALE])
    audit = ckpt.meta["metrics"]["robustness"]
    assert audit["at"] == f"{64 * SOURCE_SCALE} px, before equalising"
    assert f"applied here at {64 * SOURCE_SCALE} px, before equalising" in (out / "model_card.md").read_text()


def test_equalize_full_splits_the_data_as_every_other_recipe_does(dataset_root: Path, tmp_path: Path) -> None:
    """The grouped split hashes the images as decoded, not as equalised: the same data and seed give the same
    split whatever the intensity normalisation, so a model fine-tuned from another recipe's model is never tested on
    images that model trained on."""
    data = materialize(dataset_root, tmp_path / "ds", per_class=40)
    args = get_args_parser().parse_args(["--out", str(tmp_path / "run"), "--data", str(data), "--split", "grouped",
                                         "--seed", "0", "--augment", "acquisition"])
    splits = {}
    for intensity in ("none", "equalize", "equalize-full"):
        prepared = prepare_data(args, PreprocessSpec(image_size=64, intensity=intensity), tmp_path / "cache")
        splits[intensity] = {k: sorted(prepared.row_md5[r] for r in rows) for k, rows in prepared.split_index.items()}
        assert (prepared.sources is not None) == (intensity == "equalize-full")
    assert len(splits["none"]["test"]) > 0
    assert splits["equalize-full"] == splits["none"] == splits["equalize"]
