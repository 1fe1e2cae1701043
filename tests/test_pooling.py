"""`--pooling lse`: FracNet's logit is the log-mean-exp of its class-activation map instead of its mean, so the
strongest cells carry the score (a 13-px fracture covers about 2 of the 256 cells of a 16 x 16 map); the weights
are the same, so a checkpoint of either pooling warm-starts the other, and the served heatmap is the same map."""

from __future__ import annotations

import math
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
from fracture.ml.inference import Predictor
from fracture.ml.net import ModelArgs, build_model, fold_batchnorm
from fracture.ml.preprocess import fit_input, normalize, to_uint8_tensor, views_of
from fracture.schedule_params import RecipeError, check_recipe
from trainer.training_run import ALLOWED

SHIPPED = REPO_ROOT / "fracture" / "release" / "two-site-os8" / "model.pt"


def _inputs(sample_images: list[Path], spec: object, n: int = 24) -> torch.Tensor:
    return normalize(torch.stack([to_uint8_tensor(fit_input(Image.open(p).convert("L"), spec))  # type: ignore[arg-type]
                                  for p in sample_images[:n]]), spec)  # type: ignore[arg-type]


def test_lse_pools_the_map_by_its_strongest_cells_and_older_checkpoints_read_as_mean(
        sample_images: list[Path]) -> None:
    """On real X-rays, a shipped model's weights under each pooling: the mean's logit is the map's mean, the lse's
    its log-mean-exp, never below the mean (Jensen) and closer to the map's highest cell; folding the batch norms for
    serving keeps the lse's logits."""
    ckpt = load_checkpoint(SHIPPED)
    assert ckpt.args.pooling == "mean" and ckpt.args.output_stride == 8
    x = _inputs(sample_images, ckpt.preprocess)
    lse = build_model(replace(ckpt.args, pooling="lse")).eval()
    lse.load_state_dict(ckpt.model.state_dict())
    with torch.no_grad():
        mean_logits, cam = ckpt.model.forward_cam(x)  # type: ignore[operator]
        lse_logits, lse_cam = lse.forward_cam(x)
        folded = fold_batchnorm(lse)(x)
    assert torch.equal(cam, lse_cam)  # the same map: only how the logit pools it differs
    flat = cam.flatten(1)
    assert torch.allclose(mean_logits, flat.mean(1), atol=1e-4)
    assert torch.allclose(lse_logits, torch.logsumexp(flat, 1) - math.log(flat.shape[1]), atol=1e-4)
    assert bool((lse_logits >= mean_logits - 1e-5).all())
    gap = flat.amax(1) - lse_logits
    assert bool((gap < flat.amax(1) - mean_logits).all())  # nearer the highest cell than the mean is
    assert torch.allclose(folded, lse_logits, atol=1e-3)
    old = ModelArgs(width=8).to_dict()
    del old["pooling"]  # a checkpoint written before the option
    assert ModelArgs.from_dict(old).pooling == "mean"
    assert ModelArgs.from_dict(ModelArgs(pooling="lse").to_dict()).pooling == "lse"
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_model(ModelArgs(pooling="max"))


def test_lse_dropout_drops_whole_channels_in_training_only() -> None:
    """The head's dropout, as on the average: a dropped channel is dropped at every cell, so training logits vary
    from pass to pass and eval logits do not."""
    torch.manual_seed(0)
    model = build_model(ModelArgs(width=8, output_stride=16, pooling="lse", dropout=0.5))
    x = torch.randn(4, 1, 64, 64)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_the_served_heatmap_of_an_lse_model_is_its_class_activation_map(sample_images: list[Path]) -> None:
    """Grad-CAM of the log-mean-exp: the gradient at each cell is the head's weights times that cell's softmax
    share, which averages to the weights over the cells, so the served map is the class-activation map less the
    head's bias (what the box loss teaches), as for the mean."""
    ckpt = load_checkpoint(SHIPPED)
    lse = build_model(replace(ckpt.args, pooling="lse")).eval()
    lse.load_state_dict(ckpt.model.state_dict())
    x = _inputs(sample_images, ckpt.preprocess, 2)[:1]
    maps = layer_maps(lse, x, "identity", target_layer(lse))
    with torch.no_grad():
        _, cam = lse.forward_cam(x)
    bias = float(lse.head[-1].bias.detach()[0])  # type: ignore[index]
    size = x.shape[-1]
    expected = torch.nn.functional.interpolate((cam - bias)[None], size=(size, size), mode="bilinear",
                                               align_corners=False)[0]  # as the served map is upsampled
    assert torch.allclose(maps, expected, atol=1e-3 * float(cam.abs().max()))


def test_the_recipe_and_the_products_trainings_take_the_pooling() -> None:
    assert check_recipe({"pooling": "lse"}) == {"pooling": "lse"}
    assert check_recipe({"pooling": "mean"}) == {"pooling": "mean"}
    with pytest.raises(RecipeError, match="pooling must be one of mean, lse"):
        check_recipe({"pooling": "max"})
    assert "pooling" in ALLOWED


def test_an_lse_training_warm_started_from_a_mean_checkpoint(site_root: Path, tmp_path: Path) -> None:
    """A real training with --pooling lse and the boxes, from a mean-pooled checkpoint: the checkpoint records the
    pooling, and the served predictor's logits are the log-mean-exp of the map; a torchvision network is refused."""
    data = materialize(site_root, tmp_path / "site", per_class=12)
    first = tmp_path / "first"
    small_training(data, first, "--no-robustness", "--epochs", "1", "--output-stride", "16")
    out = tmp_path / "lse"
    proc = small_training(data, out, "--no-robustness", "--epochs", "1", "--output-stride", "16", "--pooling", "lse",
                          "--init", str(first / "model.pt"), "--boxes", str(site_root / "boxes.csv"))
    assert "started from the weights of" in proc.stderr and "box supervision: " in proc.stderr
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.args.pooling == "lse" and load_checkpoint(first / "model.pt").args.pooling == "mean"
    predictor = Predictor.from_file(out / "model.pt", device=torch.device("cpu"))
    images = sorted(p for p in data.rglob("*.jpg"))[:6]
    batch = torch.stack([to_uint8_tensor(fit_input(Image.open(p).convert("L"), ckpt.preprocess)) for p in images])
    x = normalize(batch, ckpt.preprocess)
    model = ckpt.model.eval()
    with torch.no_grad():
        logits, cam = model.forward_cam(x)  # type: ignore[operator]
        served = torch.stack([model(v) for v in views_of(x, ckpt.preprocess.views)]).mean(0)
    flat = cam.flatten(1)
    assert torch.allclose(logits, torch.logsumexp(flat, 1) - math.log(flat.shape[1]), atol=1e-4)
    probs, _ = predictor.scores(batch)
    assert np.allclose(probs, torch.sigmoid(served).numpy(), atol=1e-3)
    refused = subprocess.run([str(VENV_BIN / "fracture"), "train", "--data", str(data), "--out", str(tmp_path / "no"),
                              "--no-progress", "--dry-run", "--arch", "resnet18", "--pooling", "lse"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--pooling lse needs the fracnet architecture" in refused.stderr
