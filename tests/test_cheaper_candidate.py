"""The shipped two-views candidate: the release's weights, served on two test-time views in bfloat16, as its
checkpoint says (fracture/release/cheaper.md)."""

from __future__ import annotations

import torch
from installation import REPO_ROOT

from fracture.ml.checkpoint import load_checkpoint, read_payload
from fracture.ml.gradcam import unview
from fracture.ml.inference import Predictor
from fracture.ml.net import fold_batchnorm
from fracture.ml.preprocess import PreprocessSpec, normalize, view_element, views_of

RELEASE = REPO_ROOT / "fracture" / "release"
CANDIDATE = RELEASE / "two-views" / "model.pt"


def test_two_mirrors_are_the_left_right_mirror_and_the_anti_diagonal_mirror() -> None:
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    left_right, anti_diagonal = views_of(x, "two-mirrors")
    assert torch.equal(left_right, x.flip(3))
    assert torch.equal(anti_diagonal, x.rot90(1, dims=(2, 3)).flip(3))
    assert torch.equal(anti_diagonal[0, 0], x[0, 0].flip(0, 1).T)  # x[i, j] lands on (n-1-j, n-1-i)
    assert [torch.equal(v, view_element(x, i)) for i, v in enumerate(views_of(x, "dihedral"))] == [True] * 8
    # Grad-CAM turns each view's map back to the image's orientation.
    maps = torch.stack([v[0, 0] for v in views_of(x, "two-mirrors")])
    assert torch.equal(unview(maps, "two-mirrors"), torch.stack([x[0, 0], x[0, 0]]))


def test_a_spec_without_a_precision_is_float32_and_an_unknown_one_is_refused() -> None:
    old = PreprocessSpec().to_dict()
    del old["precision"]
    assert PreprocessSpec.from_dict(old).precision == "float32"
    try:
        PreprocessSpec(precision="int8")
    except ValueError as e:
        assert "precision" in str(e)
    else:
        raise AssertionError("an unknown precision was accepted")


def test_the_candidate_is_the_releases_weights_with_its_own_views_precision_and_threshold() -> None:
    release, candidate = read_payload(RELEASE / "model.pt"), read_payload(CANDIDATE)
    assert candidate["state_dict"].keys() == release["state_dict"].keys()
    assert all(torch.equal(candidate["state_dict"][k], v) for k, v in release["state_dict"].items())
    release_spec = PreprocessSpec.from_dict(release["preprocess"]).to_dict()
    # As read back (a key added to the spec since, such as "framing", takes its default in both).
    assert PreprocessSpec.from_dict(candidate["preprocess"]).to_dict() == {**release_spec, "views": "two-mirrors",
                                                                          "precision": "bfloat16"}
    assert candidate["threshold"] != release["threshold"]  # chosen on val again, for these outputs
    test = candidate["metrics"]["test"]
    assert test["n"] == 494 and test["sensitivity"] >= 0.98 and test["specificity"] >= 0.95
    assert test["roc_auc"] >= release["metrics"]["test"]["roc_auc"] - 0.002
    assert candidate["data_fingerprint"] == release["data_fingerprint"]
    assert candidate.get("ood_detector") is not None  # refitted on the features of the served views


def test_the_candidate_serves_the_mean_of_its_two_views_under_bfloat16() -> None:
    ckpt = load_checkpoint(CANDIDATE)
    predictor = Predictor(ckpt, device=torch.device("cpu"))
    assert predictor.spec.views == "two-mirrors" and predictor.spec.precision == "bfloat16"
    batch = torch.randint(0, 256, (4, 1, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    net = fold_batchnorm(ckpt.model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = normalize(batch, ckpt.preprocess)
        by_hand = torch.stack([net(v.contiguous(memory_format=torch.channels_last))
                               for v in views_of(x, "two-mirrors")]).mean(0)
    probs, ood = predictor.scores(batch)
    torch.testing.assert_close(torch.from_numpy(probs), torch.sigmoid(by_hand.float()))
    assert ood is not None and ood.shape == (4,)
    labels = [p.label for p in predictor.predict([(RELEASE / "plots" / "roc.png").read_bytes()])]
    assert labels[0] in ckpt.classes


def test_a_training_card_names_the_two_mirrors_views() -> None:
    from trainer.card import _views_text

    assert _views_text("two-mirrors").startswith("**two-mirrors**") and "may get another answer" in _views_text(
        "two-mirrors")
    assert _views_text("identity") == "one (identity)" and _views_text("dihedral").startswith("**dihedral**")
