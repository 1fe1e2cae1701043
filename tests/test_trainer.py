"""The trainer on real images: dry run to a servable checkpoint, audit, grouped split, metrics, promotion."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from installation import create_job, materialize
from PIL import Image
from scipy.stats import binomtest
from sklearn import metrics as skm

from fracture.audit_text import duplicates_sentence
from fracture.config import get_settings
from fracture.db import session_scope
from fracture.ml.checkpoint import load_checkpoint
from fracture.ml.net import ModelArgs, TorchvisionBinary, load_pretrained
from fracture.models import ModelStatus, ModelVersion, Result
from fracture.registry import promote, register_checkpoint
from fracture.storage import Storage
from trainer.audit import audit, decode_for_audit
from trainer.dataset_scan import scan
from trainer.metrics import binary_metrics, choose_threshold
from trainer.train_val_test_split import grouped_split


@pytest.fixture(scope="module")
def small_dataset(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize(dataset_root, tmp_path_factory.mktemp("ds20"), per_class=20)


def test_dry_run_writes_a_checkpoint_the_worker_serves(small_dataset: Path, tmp_path: Path,
                                                        fracture_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "fracture"), "train", "--data", str(small_dataset), "--out", str(out),
         "--dry-run", "--no-progress", "--width", "8", "--image-size", "64"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint:" in proc.stdout
    for name in ("model.pt", "model_card.md", "model_card.json", "audit.txt", "plots/roc.png", "plots/curves.png",
                 "plots/confusion.png", "last.pt"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.classes == ["fractured", "not fractured"]
    assert ckpt.preprocess.image_size == 64
    assert set(ckpt.meta["metrics"]) >= {"train", "val", "test"}
    assert 0.0 <= ckpt.threshold <= 1.0
    # Each split's figures come with their 95% intervals, in the checkpoint and as rows of the card's table.
    test = ckpt.meta["metrics"]["test"]
    (tp, fn), _ = test["confusion_matrix"]
    assert test["intervals"]["sensitivity"] == pytest.approx(list(binomtest(tp, tp + fn).proportion_ci()))
    card = (out / "model_card.md").read_text()
    low, high = test["intervals"]["roc_auc"]
    assert low <= test["roc_auc"] <= high
    assert f"| {low:.4f}-{high:.4f} |" in card.split("| roc_auc, 95% interval |", 1)[1].split("\n", 1)[0]

    # The worker's own code path loads what the trainer wrote and classifies real images with it.
    from worker.classify import classify_chunk

    settings = get_settings(fracture_env)
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, Storage(settings.storage_dir), out / "model.pt")
        promote(s, version)
        version_id = version.id
    files = sorted(p for p in small_dataset.rglob("*") if p.is_file())[:6]
    job_id = create_job(fracture_env, files)
    with session_scope(settings.database_url) as s:
        from sqlalchemy import select

        from fracture.models import Image as ImageRow
        ids = list(s.scalars(select(ImageRow.id).where(ImageRow.job_id == job_id)))
    classify_chunk(settings, job_id, ids)
    with session_scope(settings.database_url) as s:
        rows = list(s.scalars(select(Result).where(Result.job_id == job_id)))
    assert len(rows) == 6
    assert all(r.model_version_id == version_id for r in rows)
    for r in rows:
        assert r.error is not None or (0.0 <= r.probability <= 1.0 and r.prediction in ckpt.classes)


def _distinct_images(small_dataset: Path, n: int) -> list[Path]:
    seen, out = set(), []
    for p in sorted((small_dataset / "train").rglob("*")):
        if p.is_file() and p.read_bytes() not in seen:
            seen.add(p.read_bytes())
            out.append(p)
    return out[:n]


def _audit(root: Path):  # type: ignore[no-untyped-def]
    samples, _ = scan(root)
    return audit(samples, {s.md5: decode_for_audit(s.path) for s in samples})


def test_audit_finds_copies_made_from_real_images_and_none_among_distinct_ones(small_dataset: Path,
                                                                                tmp_path: Path) -> None:
    originals = _distinct_images(small_dataset, 8)
    root = tmp_path / "ds"
    for i, src in enumerate(originals):
        label = "fractured" if i % 2 == 0 else "not fractured"
        dest = root / "train" / label / f"img{i}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    clean = _audit(root)
    assert clean.distinct == 8 and clean.groups == 8, "distinct real images must not be grouped"
    assert not clean.leaks()
    assert clean.files_with_duplicates == 0
    assert duplicates_sentence(clean.to_dict()) == "8 files, none of them a duplicate of another (exact or near)."

    # Now plant copies of img0..img3 in test: same bytes, rotated, flipped, resized.
    with Image.open(originals[0]) as a, Image.open(originals[1]) as b, Image.open(originals[2]) as c:
        a, b, c = a.convert("L"), b.convert("L"), c.convert("L")
        (root / "test" / "fractured").mkdir(parents=True)
        (root / "test" / "not fractured").mkdir(parents=True)
        b.rotate(90, expand=True).save(root / "test" / "not fractured" / "rot.png")
        a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "test" / "fractured" / "flip.png")
        c.resize((c.width // 2, c.height // 2)).save(root / "test" / "fractured" / "small.png")
    shutil.copyfile(root / "train" / "not fractured" / f"img3{originals[3].suffix}",
                    root / "test" / "not fractured" / f"copy{originals[3].suffix}")
    report = _audit(root)
    assert report.files == 12
    assert report.exact_across["test"] == 1 and report.exact_across["train"] == 1
    assert report.near_across["test"] == 3
    assert report.groups == 8
    # Issue 20: "12 files, 12 distinct images, 8 groups of duplicates" read as 8 duplicated pictures.
    assert (report.files_with_duplicates, report.duplicate_sets) == (8, 4)
    assert duplicates_sentence(report.to_dict()) == (
        "12 files: 8 of them have a duplicate (an exact copy, or a near one: rotated, flipped, resized) in 4 sets; "
        "8 different pictures once duplicates are merged.")
    assert report.render().startswith(duplicates_sentence(report.to_dict()))
    assert report.leaks()
    assert "WARNING" in report.render()

    split = grouped_split(report, seed=1, folds=3)
    where = {m: name for name, ms in split.items() for m in ms}
    for group in set(report.group_of.values()):
        members = [m for m, g in report.group_of.items() if g == group]
        assert len({where[m] for m in members}) == 1, "a duplicate group spans two splits"


def test_grouped_split_of_real_sample_keeps_groups_whole_and_is_seeded(small_dataset: Path) -> None:
    report = _audit(small_dataset)
    a, b = grouped_split(report, seed=3), grouped_split(report, seed=3)
    assert a == b
    where = {m: name for name, ms in a.items() for m in ms}
    assert sorted(where) == sorted(report.group_of)
    for group in set(report.group_of.values()):
        assert len({where[m] for m, g in report.group_of.items() if g == group}) == 1
    assert all(a[s] for s in ("train", "val", "test"))


def test_metrics_match_scikit_learn_on_fixed_predictions() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.6, 0.1, 0.3, 0.05, 0.95])
    m = binary_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred)) == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["confusion_matrix"] == [[4, 1], [1, 4]]


def test_threshold_rule_on_fixed_predictions_returns_the_documented_value() -> None:
    # Separable scores: the lowest fracture's score keeps every fracture and rejects every other image.
    pos, neg = np.linspace(0.5, 0.99, 50), np.linspace(0.0, 0.49, 50)
    y = np.r_[np.ones(50), np.zeros(50)]
    assert choose_threshold(y, np.r_[pos, neg]) == pytest.approx(0.5)
    # Overlapping scores: the rule as its docstring states it, recomputed by brute force with scipy's own
    # Clopper-Pearson interval (two-sided 90% = one-sided 95% lower bound).
    from scipy.stats import binomtest

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(197), np.zeros(295)].astype(int)
    p = np.r_[rng.beta(8, 2, 197), rng.beta(2, 8, 295)]

    def lower(k: int, n: int) -> float:
        return binomtest(k, n).proportion_ci(0.90, "exact").low if k else 0.0

    def room(t: float) -> float:
        return min(lower(int((p[y == 1] >= t).sum()), 197) - 0.96, lower(int((p[y == 0] < t).sum()), 295) - 0.95)

    best = max(np.unique(p), key=room)
    t = choose_threshold(y, p)
    assert t == pytest.approx(best)
    assert room(t) == pytest.approx(max(room(c) for c in np.unique(p)))
    # With a sensitivity floor of 1, every fracture is kept (the specificity floor yields first).
    t1 = choose_threshold(y, p, min_sensitivity=1.0)
    assert binary_metrics(y, p, t1)["sensitivity"] == 1.0 and t1 == pytest.approx(p[y == 1].min())


def test_promotion_keeps_one_active_version(fracture_env: dict[str, str], tiny_checkpoint: Path) -> None:
    # The rule that decides an automatic promotion is tested in test_promotion.py.
    settings = get_settings(fracture_env)
    storage = Storage(settings.storage_dir)
    with session_scope(settings.database_url) as s:
        from fracture.registry import active_version

        active = active_version(s)
        assert active is not None
        worse = register_checkpoint(s, storage, tiny_checkpoint)
        better = register_checkpoint(s, storage, tiny_checkpoint)
        promote(s, better)
        s.flush()
        statuses = {v.id: v.status for v in s.query(ModelVersion)}
    assert statuses[better.id] == ModelStatus.ACTIVE
    assert statuses[active.id] == ModelStatus.RETIRED
    assert statuses[worse.id] == ModelStatus.CANDIDATE
    assert list(statuses.values()).count(ModelStatus.ACTIVE) == 1


def test_pretrained_weights_load_from_a_local_file(tmp_path: Path) -> None:
    args = ModelArgs(arch="resnet18", in_channels=3)
    import torchvision

    imagenet_like = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.save(imagenet_like.state_dict(), tmp_path / "resnet18.pth")
    model = TorchvisionBinary(args)
    missing = load_pretrained(model, tmp_path / "resnet18.pth")
    assert missing == ["net.fc.bias", "net.fc.weight"] or missing == ["fc.bias", "fc.weight"]
    assert torch.equal(model.net.conv1.weight, imagenet_like.conv1.weight)


def test_fresh_install_serves_the_shipped_release_model_with_its_plots(tmp_path: Path) -> None:
    from fracture.migrate import upgrade
    from fracture.registry import ensure_seed_model

    settings = get_settings({"FRACTURE_HOME": str(tmp_path / "home")})
    assert settings.seed_model is not None and settings.seed_model.is_file(), "the repository ships a checkpoint"
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as s:
        version = ensure_seed_model(s, settings)
        assert version is not None and version.name == "release-1" and version.status == ModelStatus.ACTIVE
        assert set(version.plots) == {"curves", "roc", "confusion"}
        assert all((settings.storage_dir / key).is_file() for key in version.plots.values())
        assert version.split_policy == "grouped" and version.metrics["test"]["n"] > 0
    ckpt = load_checkpoint(settings.seed_model)
    assert ckpt.meta["split_policy"] == "grouped"
    assert settings.seed_model.stat().st_size <= 25 * 1024 * 1024


def test_init_warm_starts_from_a_checkpoint_of_the_same_network_and_refuses_another(
        small_dataset: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    fracture = str(Path(sys.executable).parent / "fracture")
    base = [fracture, "train", "--data", str(small_dataset), "--dry-run", "--no-progress", "--no-robustness",
            "--image-size", "64", "--init", str(tiny_checkpoint)]
    proc = subprocess.run([*base, "--out", str(tmp_path / "warm"), "--width", "8", "--epochs", "1", "--lr", "1e-9"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started from the weights of" in proc.stderr
    warm = load_checkpoint(tmp_path / "warm" / "model.pt")
    tiny = load_checkpoint(tiny_checkpoint)
    assert warm.meta["init"] == str(tiny_checkpoint)
    # At a learning rate of 1e-9 the convolutions stay the tiny checkpoint's (batch-norm statistics move).
    for name, value in tiny.model.state_dict().items():
        if name.endswith("conv1.weight"):
            assert torch.allclose(warm.model.state_dict()[name], value, atol=1e-5), name
    proc = subprocess.run([*base, "--out", str(tmp_path / "other"), "--width", "16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "are another network's: width 8 (this run: 16)" in proc.stderr


def test_interpolate_blends_the_fine_tune_with_the_weights_it_started_from(
        small_dataset: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--interpolate ALPHA (WiSE-FT) keeps ALPHA of the selected epoch's weights and takes the rest from --init's: the
    same fine-tune with and without it differ by exactly that blend (batch-norm statistics too, counters kept), the
    checkpoint and its card say so; without --init it is refused."""
    fracture = str(Path(sys.executable).parent / "fracture")
    base = [fracture, "train", "--data", str(small_dataset), "--dry-run", "--no-progress", "--no-robustness",
            "--image-size", "64", "--width", "8", "--epochs", "1", "--lr", "0.01", "--threads", "1"]
    for name, extra in (("tuned", []), ("blended", ["--interpolate", "0.25"])):
        proc = subprocess.run([*base, "--init", str(tiny_checkpoint), "--out", str(tmp_path / name), *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    start = load_checkpoint(tiny_checkpoint).model.state_dict()
    tuned = load_checkpoint(tmp_path / "tuned" / "model.pt").model.state_dict()
    blended = load_checkpoint(tmp_path / "blended" / "model.pt")
    moved = 0
    for name, value in tuned.items():
        mine = blended.model.state_dict()[name]
        if value.is_floating_point():
            assert torch.allclose(mine, 0.25 * value + 0.75 * start[name], atol=1e-5), name
            moved += not torch.allclose(value, start[name], atol=1e-3)
        else:
            assert torch.equal(mine, value), name
    assert moved > 10  # the fine-tune left its start, so the blend is a third set of weights
    assert blended.meta["interpolate"] == 0.25 and blended.meta["init"] == str(tiny_checkpoint)
    assert "(--interpolate 0.25)" in blended.meta["metrics"]["selected_on"]
    assert "then 0.25 of its weights and 0.75 of --init's" in (tmp_path / "blended" / "model_card.md").read_text()
    refused = subprocess.run([*base, "--out", str(tmp_path / "alone"), "--interpolate", "0.5"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--interpolate below 1 needs --init" in refused.stderr


def test_loader_workers_augment_in_processes_and_give_the_same_model_whatever_their_number(
        small_dataset: Path, tmp_path: Path) -> None:
    """--loader-workers N augments in N processes (trainer.augmented_batches): 1 and 2 workers train the same
    weights (each batch draws from its own seed), and that is another run than augmenting in turn (0)."""
    fracture = str(Path(sys.executable).parent / "fracture")
    base = [fracture, "train", "--data", str(small_dataset), "--dry-run", "--no-progress", "--no-robustness",
            "--image-size", "64", "--width", "8", "--augment", "acquisition", "--batch-size", "16", "--ema", "0"]
    weights = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        proc = subprocess.run([*base, "--out", str(out), "--loader-workers", str(workers)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[workers] = load_checkpoint(out / "model.pt").model.state_dict()
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
