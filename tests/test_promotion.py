"""Safe promotion: the rule (unit), the gate on a real locked dataset with real evaluations, and a run's decision.

The gate tests measure the shipped release model and a copy of it whose threshold is set so high that it misses
nearly every fracture: same weights, so the same ROC-AUC, but a sensitivity far below the floor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from installation import image_files, materialize
from sqlalchemy import func, select

from fracture import datasets, trainings
from fracture.config import Settings
from fracture.db import session_scope
from fracture.ml.checkpoint import read_payload, save_checkpoint
from fracture.ml.net import ModelArgs, build_model
from fracture.ml.preprocess import PreprocessSpec
from fracture.models import Evaluation, ModelStatus, ModelVersion, RunStatus, TrainingRun
from fracture.registry import active_version, promote, register_checkpoint
from fracture.storage import Storage
from trainer.promotion import Comparison, Measure, Rule, decide_and_apply, judge
from trainer.training_run import _register

RELEASE = Path(__file__).resolve().parent.parent / "fracture" / "release" / "model.pt"
RULE = Rule(min_sensitivity=0.95, min_specificity=0.90, auc_tolerance=0.01, min_per_class=50)


def m(auc: float | None = 0.95, sens: float = 0.97, spec: float = 0.93, pos: int = 60, neg: int = 60) -> Measure:
    return Measure(positives=pos, negatives=neg, roc_auc=auc, sensitivity=sens, specificity=spec)


# ---------------------------------------------------------------- the rule


def test_a_candidate_as_good_as_the_active_within_the_tolerance_is_promoted() -> None:
    ok, reason = judge(RULE, [Comparison("dataset 'site-2 locked'", m(auc=0.945), m(auc=0.95))], "v1")
    assert ok and reason.startswith("promoted: on dataset 'site-2 locked' ROC-AUC 0.945 (active v1: 0.950)")


def test_a_candidate_worse_than_the_active_beyond_the_tolerance_stays_a_candidate() -> None:
    ok, reason = judge(RULE, [Comparison("dataset 'x'", m(auc=0.939), m(auc=0.95))], "v1")
    assert not ok and reason == "not promoted: on dataset 'x' ROC-AUC 0.939 < v1's 0.950 - 0.01"


@pytest.mark.parametrize(("sens", "spec", "missed"), [
    (0.91, 0.93, "sensitivity 0.910 < 0.95"),
    (0.97, 0.85, "specificity 0.850 < 0.90"),
    (0.90, 0.80, "sensitivity 0.900 < 0.95, specificity 0.800 < 0.90"),
])
def test_floors_hold_whatever_the_roc_auc(sens: float, spec: float, missed: str) -> None:
    better = m(auc=0.99, sens=sens, spec=spec)
    ok, reason = judge(RULE, [Comparison("dataset 'site-2 locked'", better, m(auc=0.90))], "v1")
    assert not ok and reason == f"not promoted: on dataset 'site-2 locked' {missed}"
    ok, _ = judge(RULE, [Comparison("dataset 'site-2 locked'", better, None)], None)
    assert not ok  # no active version: the floors still hold


def test_too_few_images_of_a_class_decide_nothing() -> None:
    small = Comparison("the candidate's grouped test split", m(auc=1.0, sens=1.0, spec=1.0, pos=49, neg=300), m())
    ok, reason = judge(RULE, [small], "v1")
    assert not ok and "too few images to tell (49 positive, 300 negative; at least 50 of each class" in reason
    ok, _ = judge(RULE, [dataclasses.replace(small, candidate=m(auc=1.0, pos=50, neg=50))], "v1")
    assert ok


def test_no_active_version_promotes_when_floors_and_size_hold() -> None:
    ok, reason = judge(RULE, [Comparison("dataset 'x'", m(auc=0.6), None)], None)
    assert ok and "ROC-AUC 0.600," in reason


def test_every_gate_must_pass_and_each_failure_is_named() -> None:
    sets = [Comparison("dataset 'a'", m(), m()), Comparison("dataset 'b'", m(sens=0.5), m()),
            Comparison("dataset 'c'", None, None, "the candidate could not be measured (file missing)")]
    ok, reason = judge(RULE, sets, "v1")
    assert not ok
    assert reason == ("not promoted: on dataset 'b' sensitivity 0.500 < 0.95; "
                      "on dataset 'c' the candidate could not be measured (file missing)")
    assert judge(RULE, [], "v1") == (False, "not promoted: no images to compare the candidate on "
                                            "(no gate dataset and no test split)")


def test_an_active_version_that_could_not_be_measured_blocks_promotion() -> None:
    ok, reason = judge(RULE, [Comparison("dataset 'a'", m(), None, "the active version could not be measured (x)")],
                       "v1")
    assert not ok and "active version could not be measured" in reason


def test_measure_reads_an_evaluations_metrics() -> None:
    metrics = {"n": 30, "n_per_class": {"fractured": 12, "not fractured": 18}, "positive_class": "fractured",
               "roc_auc": None, "sensitivity": 0.5, "specificity": 1.0, "confusion_matrix": [[6, 6], [0, 18]]}
    assert Measure.from_metrics(metrics) == Measure(12, 18, None, 0.5, 1.0)
    del metrics["n_per_class"]
    assert Measure.from_metrics({**metrics, "roc_auc": 0.7}).positives == 12


# ---------------------------------------------------------------- the gate, with real evaluations


@pytest.fixture(scope="module")
def locked_sample(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real test images of the dataset (up to 8 files per class): the locked site-2 set of these tests."""
    return materialize(dataset_root, tmp_path_factory.mktemp("locked"), per_class=8, splits="test")


def _gate(settings: Settings, root: Path, name: str = "site-2 locked") -> int:
    with session_scope(settings.database_url) as s:
        dataset = datasets.create_dataset(s, name, "evaluation", "server", root)
        datasets.record_validation(s, dataset.id, "splits", {}, {}, {}, "test-fingerprint")
        datasets.set_gate(s, dataset.id, True)
        return dataset.id


def _register_file(settings: Settings, path: Path, name: str, active: bool = False) -> int:
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, Storage(settings.storage_dir), path, name=name)
        if active:
            promote(s, version)
        s.flush()
        return version.id


def _with_threshold(path: Path, threshold: float) -> Path:
    payload = read_payload(RELEASE)
    payload["threshold"] = threshold
    torch.save(payload, path)
    return path


def test_the_gate_refuses_a_candidate_that_misses_the_sensitivity_floor_and_records_why(
    settings: Settings, locked_sample: Path, tmp_path: Path,
) -> None:
    settings = dataclasses.replace(settings, promote_min_per_class=3, promote_min_specificity=0.5)
    _gate(settings, locked_sample)
    release = _register_file(settings, RELEASE, "release-1", active=True)
    blind = _register_file(settings, _with_threshold(tmp_path / "blind.pt", 0.9999), "blind")

    promoted, reason = decide_and_apply(settings, blind, test_samples=None)

    assert not promoted
    assert reason.startswith("not promoted: on dataset 'site-2 locked' sensitivity ")
    assert "< 0.95" in reason and "ROC-AUC" not in reason  # same weights: the AUC is the active's
    with session_scope(settings.database_url) as s:
        assert s.get_one(ModelVersion, blind).decision == reason
        assert s.get_one(ModelVersion, blind).status == ModelStatus.CANDIDATE
        assert active_version(s).id == release  # type: ignore[union-attr]
        rows = s.scalars(select(Evaluation).order_by(Evaluation.id)).all()
        # Real evaluations of both versions on the gate, which the models page shows.
        assert [(e.model_version_id, e.status, e.split) for e in rows] == [
            (blind, RunStatus.DONE, None), (release, RunStatus.DONE, None)]
        assert rows[0].metrics["n"] == rows[1].metrics["n"] and rows[0].metrics["roc_auc"] == rows[1].metrics["roc_auc"]


def test_the_gate_promotes_a_candidate_that_holds_up_and_reuses_the_actives_evaluation(
    settings: Settings, locked_sample: Path,
) -> None:
    settings = dataclasses.replace(settings, promote_min_per_class=3, promote_min_sensitivity=0.5,
                                   promote_min_specificity=0.5)
    _gate(settings, locked_sample)
    release = _register_file(settings, RELEASE, "release-1", active=True)
    first = _register_file(settings, RELEASE, "again")
    promoted, reason = decide_and_apply(settings, first, test_samples=None)
    assert promoted, reason
    assert reason.startswith("promoted: on dataset 'site-2 locked' ROC-AUC ")
    with session_scope(settings.database_url) as s:
        assert active_version(s).id == first  # type: ignore[union-attr]
        assert s.get_one(ModelVersion, release).status == ModelStatus.RETIRED
        assert s.get_one(ModelVersion, first).decision == reason
        count = s.scalar(select(func.count(Evaluation.id)))
    # Next candidate: the active version's evaluation on the unchanged gate is reused, only the candidate's is new.
    second = _register_file(settings, RELEASE, "third")
    assert decide_and_apply(settings, second, test_samples=None)[0]
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count(Evaluation.id))) == count + 1


def test_force_bypasses_the_rule(settings: Settings, tmp_path: Path) -> None:
    blind = _register_file(settings, _with_threshold(tmp_path / "blind.pt", 0.9999), "blind")
    promoted, reason = decide_and_apply(settings, blind, test_samples=[], force=True)
    assert promoted and "forced" in reason
    with session_scope(settings.database_url) as s:
        assert active_version(s).id == blind  # type: ignore[union-attr]


# ---------------------------------------------------------------- a training run's decision


def _perfect_on_val(path: Path) -> Path:
    """A real (untrained, tiny) checkpoint whose own val figures claim a perfect model."""
    torch.manual_seed(1)
    args = ModelArgs(width=8)
    perfect = {"n": 40, "roc_auc": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    save_checkpoint(path, build_model(args), args, PreprocessSpec(image_size=64), ["fractured", "not fractured"], 0.5,
                    metrics={"val": perfect, "test": perfect}, extra={"selection_metric": 1.0})
    return path


def test_a_run_on_a_tiny_dataset_is_never_promoted_automatically(
    settings: Settings, sample_dir: Path, tmp_path: Path,
) -> None:
    test_split = [[str(p), p.parent.name] for p in image_files(sample_dir / "test")]
    with session_scope(settings.database_url) as s:
        before = active_version(s).id  # type: ignore[union-attr]
        run_id = trainings.create_run(s, {}, "test").id
        trainings.start_run(s, run_id)
    checkpoint = _perfect_on_val(tmp_path / "run" / "model.pt")
    version_id, outcome = _register(settings, run_id, {"checkpoint": str(checkpoint), "splits": {"test": test_split}},
                                    force=False)
    with session_scope(settings.database_url) as s:
        version = s.get_one(ModelVersion, version_id)
        run = s.get_one(TrainingRun, run_id)
        assert version.selection_metric == 1.0 and version.status == ModelStatus.CANDIDATE
        assert active_version(s).id == before  # type: ignore[union-attr]
        assert version.decision is not None
        assert version.decision.startswith("not promoted: on the candidate's grouped test split too few images")
        assert run.status == RunStatus.DONE and run.model_version_id == version_id
        assert version.decision in (run.message or "") and "is active" in (run.message or "")
        assert run.message == f"registered {outcome}"


def test_the_gate_refuses_to_measure_a_tampered_checkpoint(settings: Settings, sample_dir: Path) -> None:
    """The gate loads both versions through registry.load_predictor: a file that is not the registered one (its
    SHA-256) is not measured, so the candidate is not promoted on its figures."""
    test_split = [[str(p), p.parent.name] for p in image_files(sample_dir / "test")]
    rule = dataclasses.replace(settings, promote_min_per_class=1, promote_min_sensitivity=0.0,
                               promote_min_specificity=0.0, promote_auc_tolerance=1.0)
    release = _register_file(rule, RELEASE, "release-1", active=True)
    candidate = _register_file(rule, RELEASE, "again")
    with session_scope(rule.database_url) as s:
        active_file = Storage(rule.storage_dir).path(s.get_one(ModelVersion, release).checkpoint_key)
    with open(active_file, "ab") as f:
        f.write(b"tampered")

    promoted, reason = decide_and_apply(rule, candidate, test_samples=test_split)

    assert not promoted
    assert reason == (f"not promoted: on the candidate's grouped test split version {release} could not be loaded "
                      "(model file of version release-1 does not match its recorded SHA-256)")
    with session_scope(rule.database_url) as s:
        assert active_version(s).id == release  # type: ignore[union-attr]
