"""The robustness audit and the acquisition recipe on real X-rays: the changes, the intensity normalisation, the audit's
figures against scikit-learn, the heatmap audit against the boxes, and a dry-run training with the recipe."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import image_files, materialize, small_training
from PIL import Image
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from fracture.ml.checkpoint import load_checkpoint
from fracture.ml.inference import Predictor
from fracture.ml.preprocess import PreprocessSpec, decode_gray, normalize, square, to_uint8_tensor
from fracture.schedule_params import RecipeError, check_recipe
from trainer.acquisition import AUDIT, gamma, margin, markers, random_acquisition, rotate, window
from trainer.augmentation import TrainAugment
from trainer.robustness import acquisition_audit, border_mask, box_mask, heatmap_audit, peak_positions, worst

RELEASE = Path(__file__).resolve().parent.parent / "fracture" / "release" / "model.pt"


@pytest.fixture(scope="module")
def xrays(sample_images: list[Path]) -> list[Image.Image]:
    """Real X-rays of the first source, decoded at up to 512 px as the audit decodes them."""
    return [decode_gray(p, 512) for p in sample_images[:12]]


def test_each_change_keeps_the_frame_and_does_what_its_name_says(xrays: list[Image.Image]) -> None:
    im = xrays[0]
    a = np.asarray(im, dtype=np.int32)
    for c in AUDIT:
        if c.change is not None:
            out = c.change(im)
            assert out.size == im.size and out.mode == "L", c.name
            assert not np.array_equal(np.asarray(out), a), f"{c.name} changed nothing"
    w, h = im.size
    framed = np.asarray(margin(0.10)(im))
    band = int(0.10 * min(w, h)) - 1
    assert framed[:band].max() == 0 and framed[-band:].max() == 0 and framed[:, :band].max() == 0
    white = np.asarray(margin(0.05, 255)(im))
    assert white[: int(0.05 * h) - 1].min() == 255
    turned = np.asarray(rotate(20)(im))
    assert turned[0, 0] == turned[-1, -1] == 0  # black corners
    bright = np.asarray(gamma(0.7)(im), dtype=np.int32)
    assert (bright >= a).all() and bright.mean() > a.mean() + 5  # brighter everywhere, never darker
    assert (np.asarray(window(40, 215)(im))[a <= 40] == 0).all()
    marked = np.asarray(markers(corner=1)(im), dtype=np.int32)
    changed = np.argwhere(marked != a)
    assert len(changed) and (changed[:, 0] < 0.2 * h).any()  # the letter, top right
    assert ((changed[:, 0] < 0.2 * h) | (changed[:, 0] > 0.8 * h)).all()  # letter and text stay at the edges


def test_random_acquisition_is_seeded_and_varied(xrays: list[Image.Image]) -> None:
    im = square(xrays[1], 128)
    draw = [np.asarray(random_acquisition(np.random.default_rng(s))(im)) for s in range(12)]
    again = [np.asarray(random_acquisition(np.random.default_rng(s))(im)) for s in range(12)]
    assert all(np.array_equal(x, y) for x, y in zip(draw, again, strict=True))
    distinct = {x.tobytes() for x in draw}
    assert len(distinct) >= 10  # most draws change the image, each differently
    torch.manual_seed(0)
    batch = torch.stack([to_uint8_tensor(square(x, 64)) for x in xrays[:4]])
    out = TrainAugment(64, "acquisition")(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8


def test_lossy_acquisition_clips_and_blurs_more_often_than_acquisition() -> None:
    """`acquisition-lossy` draws the changes that lose information (clipping look-up tables, a coarser resolution)
    more often: measured on what the draws do to two synthetic patterns, over the same 1,000 seeds."""
    yy, xx = np.mgrid[:128, :128]
    blocks = Image.fromarray(np.where((yy // 4 + xx // 4) % 2, 235, 20).astype(np.uint8))  # 2 grey levels
    fine = Image.fromarray((((yy // 2 + xx // 2) % 2) * 120 + 60).astype(np.uint8))  # 2-px detail

    def shares(lossy: bool) -> tuple[float, float]:
        clipped = blurred = 0
        for s in range(1000):
            a = np.asarray(random_acquisition(np.random.default_rng(s), lossy)(blocks))[40:88, 40:88]
            clipped += ((a == 0) | (a == 255)).mean() > 0.3  # both levels pushed to black or white
            b = np.asarray(random_acquisition(np.random.default_rng(s), lossy)(fine), dtype=np.float64)
            blurred += np.abs(np.diff(b[40:88, 40:88], axis=1)).mean() < 30  # the 2-px detail mostly gone
        return clipped / 1000, blurred / 1000

    (clip, blur), (clip_lossy, blur_lossy) = shares(False), shares(True)
    assert clip_lossy > 1.3 * clip > 0 and blur_lossy > 1.3 * blur > 0, (clip, clip_lossy, blur, blur_lossy)
    torch.manual_seed(0)
    batch = torch.stack([to_uint8_tensor(fine.resize((64, 64)))] * 4)
    out = TrainAugment(64, "acquisition-lossy")(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and not torch.equal(out, batch)


def test_equalize_makes_exposure_changes_nearly_invisible_to_the_network(xrays: list[Image.Image]) -> None:
    plain, equalized = PreprocessSpec(), PreprocessSpec(intensity="equalize")
    ratios = []
    for im in xrays[:6]:
        x = to_uint8_tensor(square(im, 128))[None]
        for g in (0.5, 0.7, 1.4, 2.0):
            y = to_uint8_tensor(square(gamma(g)(im), 128))[None]
            without = float((normalize(x, plain) - normalize(y, plain)).abs().mean())
            with_eq = float((normalize(x, equalized) - normalize(y, equalized)).abs().mean())
            ratios.append(with_eq / without)
    # Not exactly zero: the squash to 128 px interpolates after the change, and a darker copy merges grey levels.
    assert np.median(ratios) < 0.2 and max(ratios) < 0.7, ratios
    old = PreprocessSpec().to_dict()
    del old["intensity"]  # a checkpoint written before the option
    assert PreprocessSpec.from_dict(old).intensity == "none"
    with pytest.raises(ValueError, match="intensity"):
        PreprocessSpec(intensity="clahe")


def test_the_recipe_fields_accept_the_new_options_and_refuse_others() -> None:
    assert check_recipe({"augment": "acquisition", "intensity": "equalize"}) == {"augment": "acquisition",
                                                                                 "intensity": "equalize"}
    assert check_recipe({"augment": "acquisition-lossy"}) == {"augment": "acquisition-lossy"}
    with pytest.raises(RecipeError, match="intensity must be one of none, equalize"):
        check_recipe({"intensity": "histogram"})


def test_the_audit_of_the_release_matches_scikit_learn_on_changed_real_images(
    dataset_root: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = materialize(dataset_root, tmp_path_factory.mktemp("audit"), per_class=8, splits="test")
    files = image_files(root)
    images = [decode_gray(p, 512) for p in files]
    y = np.array([1.0 if p.parent.name == "fractured" else 0.0 for p in files])
    predictor = Predictor.from_file(RELEASE, device=torch.device("cpu"))
    changes = [c for c in AUDIT if c.name in ("none", "brighter (gamma 0.7)", "black margin 10%")]
    rows = acquisition_audit(predictor, images, y, changes)
    assert [r["change"] for r in rows] == [c.name for c in changes]
    for change, row in zip(changes, rows, strict=True):
        # Independently: the change, the worker's squash, the served scores, scikit-learn.
        u8 = torch.stack([to_uint8_tensor(square(change.change(im) if change.change else im, 128)) for im in images])
        prob, ood = predictor.scores(u8)
        assert row["n"] == len(files)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-9)
        called = prob >= predictor.ckpt.threshold
        assert row["sensitivity"] == pytest.approx(called[y == 1].mean())
        assert row["specificity"] == pytest.approx((~called[y == 0]).mean())
        assert ood is not None and row["flagged"] == pytest.approx(float(np.mean(ood >= 1)))
        kept = ood < 1
        assert row["kept"]["n"] == int(kept.sum())
        # The figures a target reads carry their 95% intervals: the not-flagged images' sensitivity, the exact
        # binomial interval of its counts.
        hits, fractured = int(called[kept & (y == 1)].sum()), int((kept & (y == 1)).sum())
        assert row["kept"]["intervals"]["sensitivity"] == (
            pytest.approx(list(binomtest(hits, fractured).proportion_ci())) if fractured else None)
        assert "intervals" not in row  # all images, flagged ones included: no target reads them
    # The release is not invariant to exposure: a brighter copy of the same X-rays is scored differently.
    assert rows[1]["roc_auc"] != rows[0]["roc_auc"] or rows[1]["sensitivity"] != rows[0]["sensitivity"]
    w = worst(rows)
    assert w["flagged"] == max(r["flagged"] for r in rows)


def test_heatmap_audit_measures_mass_and_pointing_against_real_fracture_boxes(
    site_root: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    mask = box_mask([(0.25, 0.25, 0.5, 0.5)], 128)
    assert mask.sum() == 32 * 32 and mask[32:64, 32:64].all()
    assert border_mask(128).mean() == pytest.approx(1 - (128 - 26) ** 2 / 128**2)
    root = materialize(site_root, tmp_path_factory.mktemp("site"), per_class=6)
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(site_root / "boxes.csv", newline="") as f:
        for b in csv.DictReader(f):
            if b["class"] != "humerus":
                boxes.setdefault(b["filename"], []).append(
                    (float(b["x0"]), float(b["y0"]), float(b["x1"]), float(b["y1"])))
    files = [p for p in image_files(root / "train" / "fractured") if p.name in boxes][:4]
    assert files, "the sample's fractured images have boxes"
    predictor = Predictor.from_file(RELEASE, device=torch.device("cpu"))
    images = [decode_gray(p, 512) for p in files]
    result = heatmap_audit(predictor, images, [boxes[p.name] for p in files])
    assert result["n"] == len(files)
    assert result["box_area"] == pytest.approx(np.mean([box_mask(boxes[p.name], 128).mean() for p in files]))
    assert 0 <= result["box_mass"] <= 1 and 0 <= result["border_mass"] <= 1
    assert result["pointing_game"] in {i / len(files) for i in range(len(files) + 1)}
    assert result["map_cells"] == 4 and result["pointing_game"] <= result["pointing_reach"]  # no hit out of reach
    # A box over the whole image holds all the mass and every maximum.
    whole = heatmap_audit(predictor, images[:2], [[(0.0, 0.0, 1.0, 1.0)]] * 2)
    assert whole["box_mass"] == pytest.approx(1.0) and whole["pointing_game"] == 1.0
    assert whole["pointing_reach"] == 1.0


def test_a_map_peaks_only_at_its_cells_centres_so_its_cells_bound_the_pointing_game() -> None:
    """The pointing game's reach: a 4x4 map upsampled to 128 px peaks at 16 places (the inner cells' centres, 32 px
    apart; an edge cell's flat band at its first pixel, where argmax takes the first of equal values); a 13-px box
    between them holds none, and an 8x8 map's (16 px apart) reach it."""
    coarse, fine = peak_positions(4, 128), peak_positions(8, 128)
    assert len(set(coarse.tolist())) == 16 and len(set(fine.tolist())) == 64
    rows, cols = np.divmod(coarse, 128)
    assert set(rows.tolist()) == set(cols.tolist()) == {0, 47, 79, 112}
    between = box_mask([(0.15, 0.15, 0.25, 0.25)], 128)  # pixels 19-31
    assert not between.flat[coarse].any() and between.flat[fine].any()
    # A trimmed frame shrinks the map into the image's box: its peaks stay inside it.
    frame = torch.tensor([10, 118, 20, 108])
    r, c = np.divmod(peak_positions(4, 128, frame), 128)
    assert r.min() >= 10 and r.max() < 118 and c.min() >= 20 and c.max() < 108


def test_a_dry_run_with_the_acquisition_recipe_serves_equalized_and_carries_its_audit(
    dataset_root: Path, tmp_path: Path,
) -> None:
    data = materialize(dataset_root, tmp_path / "ds", per_class=12)
    out = tmp_path / "run"
    proc = small_training(data, out, "--dry-run", "--augment", "acquisition", "--intensity", "equalize")
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.preprocess.intensity == "equalize"
    assert ckpt.meta["augment"] == "acquisition" and ckpt.meta["ood_acquisition"] is True
    # Selected on val as it is and on an acquisition-changed copy of it.
    assert len(ckpt.meta["history"]["val_auc_changed"]) == 1 and "val_auc_changed" in proc.stderr
    assert "acquisition-changed" in ckpt.meta["metrics"]["selected_on"]
    audit = ckpt.meta["metrics"]["robustness"]
    assert [r["change"] for r in audit["rows"]] == [c.name for c in AUDIT]
    assert audit["rows"][0]["n"] == ckpt.meta["metrics"]["test"]["n"]
    assert "## Robustness audit (test split)" in (out / "model_card.md").read_text()
    assert "brighter (gamma 0.7)" in (out / "model_card.md").read_text()
    # Served with the equalisation: a brighter copy of an X-ray gets nearly the same probability.
    predictor = Predictor(ckpt, torch.device("cpu"))
    files = image_files(data / "test")[:8]
    grays = [decode_gray(p, 256) for p in files]
    x = torch.stack([to_uint8_tensor(square(g, 64)) for g in grays])
    xb = torch.stack([to_uint8_tensor(square(gamma(0.6)(g), 64)) for g in grays])
    p, _ = predictor.scores(x)
    pb, _ = predictor.scores(xb)
    assert np.abs(p - pb).max() < 0.05


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_box_masks_move_with_their_images_through_every_augmentation() -> None:
    # A white box on black: every draw's exposure keeps it bright, so where the image's box lands after the
    # augmentation is where its mask must land.
    size = 96
    box = torch.zeros((8, 1, size, size), dtype=torch.uint8)
    for i in range(8):
        r, c = 10 + 7 * i, 60 - 5 * i
        box[i, 0, r:r + 20, c:c + 24] = 255
    torch.manual_seed(0)
    augment = TrainAugment(size, "acquisition")
    moved_any, compared = False, 0
    for _ in range(6):
        images, masks = augment.with_masks(box.clone(), box.clone())
        assert masks is not None and images.shape == masks.shape == box.shape
        for img, m in zip(images, masks, strict=True):
            seen, mask = img[0].numpy() > 127, m[0].numpy() > 127
            edges = (seen[0].mean(), seen[-1].mean(), seen[:, 0].mean(), seen[:, -1].mean())
            if mask.any() and max(edges) < 0.5:  # not framed in white (a white margin hides the box's outline)
                assert _iou(seen, mask) > 0.6
                compared += 1
            moved_any |= not np.array_equal(mask, box[0, 0].numpy() > 127)
    assert moved_any and compared >= 24
    # Without masks the same draws give the same images (the seeded recipe is unchanged).
    torch.manual_seed(1)
    a = augment(box.clone())
    torch.manual_seed(1)
    b, none = augment.with_masks(box.clone())
    assert none is None and torch.equal(a, b)


def test_box_loss_is_low_when_the_map_points_into_the_box_and_zero_without_boxes() -> None:
    from trainer.box_supervision import box_loss

    masks = torch.zeros((2, 1, 64, 64), dtype=torch.uint8)
    masks[:, :, 8:24, 40:56] = 255  # covers cells (1..2, 5..6) of an 8x8 map
    inside, outside = torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)
    inside[:, 2, 5] = 8.0
    outside[:, 6, 1] = 8.0
    assert float(box_loss(inside, masks)) < 0.1 < 2.0 < float(box_loss(outside, masks))
    cam = torch.zeros(2, 8, 8, requires_grad=True)
    loss = box_loss(cam, torch.zeros_like(masks))
    loss.backward()
    assert float(loss.detach()) == 0.0 and cam.grad is not None


def test_the_peak_box_loss_asks_only_that_the_maps_highest_cell_lie_in_a_box() -> None:
    """--box-loss peak: about 0 once the highest cell is inside a box by a margin, whatever the rest of the map;
    log 2 on a flat map; large when the peak is outside; its gradient raises the best cell inside and lowers the
    peak outside, and touches no other cell (the share loss moves every cell)."""
    from trainer.box_supervision import box_loss

    masks = torch.zeros((1, 1, 64, 64), dtype=torch.uint8)
    masks[:, :, 8:24, 40:56] = 255  # cells (1..2, 5..6) of an 8x8 map
    inside = torch.full((1, 8, 8), -1.0)
    inside[0, 2, 5] = 10.0
    inside[0, 4:, :5] = 7.0  # a wide, lower plateau outside the box: half the map's mass, and no matter to "peak"
    assert float(box_loss(inside, masks, "peak")) < 0.05 < 0.5 < float(box_loss(inside, masks, "share"))
    assert float(box_loss(torch.zeros(1, 8, 8), masks, "peak")) == pytest.approx(math.log(2))
    cam = torch.zeros(1, 8, 8)
    cam[0, 6, 1], cam[0, 1, 6] = 8.0, 2.0
    cam.requires_grad_(True)
    loss = box_loss(cam, masks, "peak")
    assert float(loss.detach()) > 5.9
    loss.backward()
    grad = cam.grad[0]  # type: ignore[index]
    assert grad[6, 1] > 0 > grad[1, 6] and int((grad != 0).sum()) == 2
    full = torch.full((1, 1, 64, 64), 255, dtype=torch.uint8)  # a box over every cell: nothing to compare
    assert float(box_loss(cam.detach(), full, "peak")) == 0.0


def test_the_centres_box_cells_are_those_where_a_peak_would_point_into_the_box() -> None:
    """--box-cells centres: a box that touches four cells of an 8x8 map at 128 px but holds one cell's peak counts
    that cell alone, so a map peaking on a touched cell whose peak lies outside the box (a pointing-game miss) is
    a large loss, not the small one `touched` gives it; a box holding no peak keeps the cells it touches."""
    from trainer.box_supervision import box_cells, box_loss

    masks = torch.from_numpy(box_mask([(0.38, 0.38, 0.52, 0.52)], 128).astype(np.uint8) * 255)[None, None]
    peaks = peak_positions(8, 128)
    touched, centres = box_cells(masks, 8, "touched")[0], box_cells(masks, 8, "centres")[0]
    assert int(touched.sum()) == 4 and int(centres.sum()) == 1
    held = int(centres.argmax())
    assert masks.flatten()[peaks[held]] == 255 and touched[held] == 1
    miss = next(c for c in range(64) if touched[c] and not centres[c])
    assert masks.flatten()[peaks[miss]] == 0  # that cell's peak lies outside the box
    cam = torch.zeros(1, 64)
    cam[0, miss] = 8.0
    cam = cam.view(1, 8, 8)
    assert float(box_loss(cam, masks, "share", "touched")) < 0.1 < 5.0 < float(box_loss(cam, masks, "share", "centres"))
    assert float(box_loss(cam, masks, "peak", "centres")) > 5.0 > 0.1 > float(box_loss(cam, masks, "peak", "touched"))
    # A 5-px box between four cells' peaks holds none of them: its touched cells stand in.
    small = torch.from_numpy(box_mask([(0.45, 0.45, 0.49, 0.49)], 128).astype(np.uint8) * 255)[None, None]
    assert not small.flatten()[torch.from_numpy(peaks)].any()
    assert torch.equal(box_cells(small, 8, "centres"), box_cells(small, 8, "touched"))


def test_a_training_supervised_by_real_fracture_boxes_under_a_time_budget(
        site_root: Path, tmp_path: Path) -> None:
    data = materialize(site_root, tmp_path / "site", per_class=24)
    out = tmp_path / "run"
    proc = small_training(data, out, "--no-robustness", "--epochs", "4", "--augment", "acquisition", "--boxes",
                          str(site_root / "boxes.csv"), "--box-weight", "0.5", "--framing", "trim",
                          "--max-minutes", "0.0001")
    boxed = int(proc.stderr.split("box supervision: ")[1].split()[0])
    assert boxed > 0
    assert "--max-minutes 0.0001: 1 epochs fit, not 4" in proc.stderr
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.meta["box_weight"] == 0.5 and ckpt.meta["boxes"] == str(site_root / "boxes.csv")
    assert ckpt.preprocess.framing == "trim"  # its boxes cropped with each image's frame
    assert len(ckpt.meta["history"]["train_loss"]) == 1
    assert ckpt.meta["metrics"]["selected_epoch"] == 1
