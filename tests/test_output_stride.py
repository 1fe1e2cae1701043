"""`--output-stride 16`: FracNet's last stage keeps its input's resolution (dilated), so the class-activation map, the
box loss and the heatmap have twice the cells per side; the weights are the same shapes, so a checkpoint of either
stride warm-starts the other."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import REPO_ROOT, VENV_BIN, materialize, small_training
from PIL import Image

from fracture.ml.checkpoint import load_checkpoint
from fracture.ml.gradcam import layer_maps, target_layer
from fracture.ml.net import ModelArgs, build_model
from fracture.ml.preprocess import fit_input, normalize, to_uint8_tensor
from fracture.schedule_params import RecipeError, check_recipe
from trainer.training_run import ALLOWED

SHIPPED = REPO_ROOT / "fracture" / "release" / "two-site-eqf" / "model.pt"


def test_the_stride_sets_the_maps_cells_and_older_checkpoints_read_as_32() -> None:
    x = torch.randn(2, 1, 128, 128)
    for stride, cells in ((32, 4), (16, 8), (8, 16)):
        model = build_model(ModelArgs(width=8, output_stride=stride)).eval()
        logits, cam = model.forward_cam(x)
        assert logits.shape == (2,) and cam.shape == (2, cells, cells)
        # The class-activation map still adds up to the logit: its mean is the logit (eval: no dropout).
        assert torch.allclose(cam.mean((1, 2)), logits, atol=1e-5)
    old = ModelArgs(width=8).to_dict()
    del old["output_stride"]  # a checkpoint written before the option
    assert ModelArgs.from_dict(old).output_stride == 32
    assert ModelArgs.from_dict(ModelArgs(output_stride=16).to_dict()).output_stride == 16
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_model(ModelArgs(output_stride=4))


def test_a_shipped_models_weights_at_stride_16_see_what_they_saw_at_32(sample_images: list[Path]) -> None:
    """The same weights, the last stage dilated instead of strided: on real X-rays the logits stay close to the
    stride-32 network's (the fine-tuning starts near where the checkpoint was), and the served Grad-CAM has 8x8
    cells where it had 4x4."""
    ckpt = load_checkpoint(SHIPPED)
    x = normalize(torch.stack([to_uint8_tensor(fit_input(Image.open(p).convert("L"), ckpt.preprocess))
                               for p in sample_images[:24]]), ckpt.preprocess)
    fine = build_model(replace(ckpt.args, output_stride=16)).eval()
    fine.load_state_dict(ckpt.model.state_dict())
    with torch.no_grad():
        coarse_logits, fine_logits = ckpt.model(x).numpy(), fine(x).numpy()
    assert np.corrcoef(coarse_logits, fine_logits)[0, 1] > 0.95
    shapes = {}
    for name, model in (("coarse", ckpt.model), ("fine", fine)):
        hook = target_layer(model).register_forward_hook(lambda _m, _i, out, n=name: shapes.__setitem__(n, out.shape))
        try:
            maps = layer_maps(model, x[:1], "identity", target_layer(model))
        finally:
            hook.remove()
        assert maps.shape == (1, 128, 128)
    assert shapes["coarse"][-2:] == (4, 4) and shapes["fine"][-2:] == (8, 8)


def test_stride_8_dilates_the_last_two_stages_and_keeps_what_stride_16_saw(sample_images: list[Path]) -> None:
    """Stride 8: the third stage no longer strides either (dilation 2 from its first block's second convolution),
    the last dilates 4; the same weights load, the served Grad-CAM has 16x16 cells at 128 px, and on real X-rays
    the logits stay close to the stride-16 network's (a fine-tune starts near its checkpoint)."""
    ckpt = load_checkpoint(REPO_ROOT / "fracture" / "release" / "two-site-pointing" / "model.pt")
    assert ckpt.args.output_stride == 16
    finer = build_model(replace(ckpt.args, output_stride=8)).eval()
    finer.load_state_dict(ckpt.model.state_dict())
    dilations = [(b.conv1.dilation[0], b.conv2.dilation[0], b.conv1.stride[0]) for b in finer.stages]  # type: ignore[union-attr]
    assert dilations == [(1, 1, 2), (1, 1, 2), (1, 2, 1), (2, 2, 1), (2, 4, 1)]
    x = normalize(torch.stack([to_uint8_tensor(fit_input(Image.open(p).convert("L"), ckpt.preprocess))
                               for p in sample_images[:24]]), ckpt.preprocess)
    with torch.no_grad():
        logits, cam = finer.forward_cam(x)
        assert np.corrcoef(ckpt.model(x).numpy(), logits.numpy())[0, 1] > 0.9
    assert cam.shape == (24, 16, 16)


def test_the_recipe_and_the_products_trainings_take_the_stride() -> None:
    assert check_recipe({"output_stride": 16}) == {"output_stride": "16"}  # JSON's number, as the API sends it
    assert check_recipe({"output_stride": "32"}) == {"output_stride": "32"}  # a form's word
    assert check_recipe({"output_stride": 8}) == {"output_stride": "8"}
    with pytest.raises(RecipeError, match="output_stride must be one of 32, 16, 8"):
        check_recipe({"output_stride": 4})
    assert "output_stride" in ALLOWED


def test_a_training_at_stride_16_warm_started_from_a_stride_32_checkpoint(site_root: Path, tmp_path: Path) -> None:
    data = materialize(site_root, tmp_path / "site", per_class=12)
    first = tmp_path / "first"
    small_training(data, first, "--no-robustness", "--epochs", "1")
    assert load_checkpoint(first / "model.pt").args.output_stride == 32
    out = tmp_path / "fine"
    proc = small_training(data, out, "--no-robustness", "--epochs", "1", "--output-stride", "16",
                          "--init", str(first / "model.pt"), "--boxes", str(site_root / "boxes.csv"))
    assert "started from the weights of" in proc.stderr and "box supervision: " in proc.stderr
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.args.output_stride == 16
    _, cam = ckpt.model.forward_cam(torch.zeros(1, 1, 64, 64))
    assert cam.shape == (1, 4, 4)  # 64 px over 16


def test_select_auc_pointing_keeps_the_epoch_best_on_val_auc_and_pointing_together(site_root: Path,
                                                                                    tmp_path: Path) -> None:
    """With --boxes, each epoch measures the pointing game on val's boxed fractured images (history val_pointing);
    --select auc-pointing keeps the epoch whose mean of val ROC-AUC and that pointing game is highest; without boxes
    the option is refused."""
    data = materialize(site_root, tmp_path / "site", per_class=30)
    out = tmp_path / "run"
    proc = small_training(data, out, "--no-robustness", "--epochs", "3", "--output-stride", "16",
                          "--boxes", str(site_root / "boxes.csv"), "--box-loss", "peak", "--select", "auc-pointing")
    found = re.search(r"(\d+) of val's measure the pointing game each epoch", proc.stderr)
    assert found and int(found[1]) > 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "model.pt")
    history = ckpt.meta["history"]
    assert ckpt.meta["box_loss"] == "peak" and ckpt.meta["box_weight"] == 1.0
    pointing = history["val_pointing"]
    assert len(pointing) == 3 and all(0 <= p <= 1 for p in pointing)
    assert all(round(p * int(found[1])) == pytest.approx(p * int(found[1]), abs=1e-6) for p in pointing)
    # The highest mean of val ROC-AUC and pointing game; of equal ones, the lowest val loss.
    ranked = [((auc + p) / 2, -loss) for auc, p, loss in zip(history["val_auc"], pointing, history["val_loss"],
                                                               strict=True)]
    assert ckpt.meta["metrics"]["selected_epoch"] == ranked.index(max(ranked)) + 1
    assert "pointing game on val's boxed fractured images" in ckpt.meta["metrics"]["selected_on"]
    assert (out / "plots").is_dir()
    refused = subprocess.run([str(VENV_BIN / "fracture"), "train", "--data", str(data), "--out", str(tmp_path / "no"),
                              "--no-progress", "--dry-run", "--select", "auc-pointing"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--select auc-pointing needs --boxes" in refused.stderr


def test_runs_of_any_input_size_split_the_same_data_and_seed_alike(site_root: Path, tmp_path: Path) -> None:
    """The grouped split (and the duplicate audit it comes from) hashes every run's images at one size, so a run at
    another input size, warm-started from a checkpoint of the same data and seed, is validated and tested on the
    same images and never on one the checkpoint trained on."""
    from trainer.prepared_data import prepare_data
    from trainer.train import get_args_parser, network_input

    data = materialize(site_root, tmp_path / "site", per_class=40)
    splits = []
    for size in (64, 128, 192):
        args = get_args_parser().parse_args(["--data", str(data), "--image-size", str(size), "--out", str(tmp_path)])
        spec, _ = network_input(args)
        prepared = prepare_data(args, spec, tmp_path / "cache")
        assert prepared.images.shape[-1] == size
        splits.append({name: sorted(prepared.row_md5[r] for r in rows) for name, rows in prepared.split_index.items()})
    assert splits[0] == splits[1] == splits[2]
    assert all(splits[0][name] for name in ("train", "val", "test"))
