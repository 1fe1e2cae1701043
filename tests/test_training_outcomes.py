"""What the training pages promise: a fresh install offers only what can work and says what to do; a run's one
headline val ROC-AUC is the same, with what it measures, in its log, its result, its page, its card and /models;
a run that was not promoted reads as an outcome, not a failure; reviewed corrections left out say why.

Real datasets (small samples of the shared ones), real trainings (dry runs of a tiny recipe, in process).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from installation import materialize_both
from PIL import Image as PILImage
from web_client import make_client, ready_dataset

from fracture import trainings, val_auc
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.ml.preprocess import PreprocessSpec
from fracture.models import ModelVersion, TrainingRun
from trainer import card
from trainer.prepared_data import prepare_data
from trainer.train import get_args_parser
from trainer.training_run import run_training

TINY = {"width": 8, "image_size": 64}


@pytest.fixture(scope="module")
def roots(dataset_root: Path, site_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_both(dataset_root, site_root, tmp_path_factory.mktemp("roots"))


@pytest.fixture
def cfg(fracture_env: dict[str, str], roots: Path) -> Iterator[Settings]:
    yield get_settings({**fracture_env, "DATASET_ROOTS": str(roots)})
    dispose_engines()


def run_count(cfg: Settings) -> int:
    with session_scope(cfg.database_url) as s:
        return s.query(TrainingRun).count()


# ---------------------------------------------------------------- a fresh install (point 3)


def test_a_fresh_install_offers_no_training_it_cannot_run_and_says_what_to_do(cfg: Settings) -> None:
    assert cfg.dataset_dir is None
    client = make_client(cfg)
    page = client.get("/training").get_data(as_text=True)
    assert 'id="retrain"' not in page and 'id="start"' not in page  # neither button can work yet
    banner = re.search(r'<p class="banner error" id="no-dataset">(.*?)</p>', page, re.S)
    assert banner is not None
    said = " ".join(banner.group(1).split())
    assert "Datasets" in said and "upload a zip" in said and "FRACTURE_DATASET" in said

    # The button's route and the API refuse, with what to do, and record no run.
    retrain = client.post("/training/retrain")
    assert retrain.status_code == 409 and "FRACTURE_DATASET" in retrain.get_data(as_text=True)
    for body in ({}, {"dataset_ids": []}, {"dry_run": True}):
        refused = client.post("/api/trainings", json=body)
        assert refused.status_code == 409, refused.get_json()
        error = refused.get_json()["error"]
        assert error.startswith("Cannot train: no training dataset is ready") and "Datasets page" in error
    assert run_count(cfg) == 0


def test_retrain_now_is_offered_once_fracture_dataset_is_a_folder(
    fracture_env: dict[str, str], roots: Path, tmp_path: Path,
) -> None:
    missing = get_settings({**fracture_env, "FRACTURE_DATASET": str(tmp_path / "nowhere")})
    client = make_client(missing)
    assert 'id="retrain"' not in client.get("/training").get_data(as_text=True)
    refused = client.post("/training/retrain")
    assert refused.status_code == 409 and "is not a folder" in refused.get_data(as_text=True)
    dispose_engines()

    configured = get_settings({**fracture_env, "FRACTURE_DATASET": str(roots / "site")})
    assert 'id="retrain"' in make_client(configured).get("/training").get_data(as_text=True)
    dispose_engines()


def test_a_run_that_fails_anyway_heads_its_log_with_the_reason_not_the_traceback(cfg: Settings) -> None:
    with session_scope(cfg.database_url) as s:  # a run on FRACTURE_DATASET recorded before it was unset
        run_id = trainings.create_run(s, {"dry_run": True}, "recorded by an older release").id
    assert run_training(cfg, run_id) is None

    run = make_client(cfg).get(f"/api/trainings/{run_id}").get_json()
    assert run["status"] == "failed" and run["error"].startswith("The training failed: no dataset was named")
    log = (cfg.storage_dir / trainings.log_key(run_id)).read_text()
    failure = log[log.index("The training failed"):]
    assert failure.splitlines()[0].endswith(run["error"])  # the sentence first ...
    assert "Traceback" in failure.splitlines()[2]  # ... the details under it
    assert "Traceback" not in log[: log.index("The training failed")]


# ---------------------------------------------------------------- one val ROC-AUC per run (points 4 and 9)


def test_a_runs_headline_val_auc_is_the_same_with_its_meaning_in_log_result_page_card_and_models(
    cfg: Settings, roots: Path,
) -> None:
    client = make_client(cfg)
    site = ready_dataset(client, cfg, roots / "site", "site")
    run_id = client.post("/api/trainings", json={"dataset_ids": [site], "dry_run": True, **TINY}).get_json()["id"]
    assert run_training(cfg, run_id) is not None

    run = client.get(f"/api/trainings/{run_id}").get_json()
    assert run["status"] == "done", run
    with session_scope(cfg.database_url) as s:
        version = s.query(ModelVersion).filter_by(name=run["model_version"]).one()
        served, name, version_id = version.selection_metric, version.name, version.id
        assert version.metrics["served_views"] == "dihedral" and served == version.metrics["val"]["roc_auc"]
    assert run["val_auc"] == served and run["selection_val_auc"] == run["history"]["val_auc"][-1]
    headline = val_auc.served_text(served, "dihedral")
    assert "8 test-time views" in headline and run["val_auc_measures"] in headline

    # The run's result and the log's last line state it the same way.
    assert run["message"].startswith(f"registered {name}: {headline}; ")
    log = (cfg.storage_dir / trainings.log_key(run_id)).read_text().splitlines()
    assert f"registered model version {name}: {headline}" in log[-1]
    epoch_line = next(line for line in log if " epoch 1/1 " in line)
    assert f"selection val_auc (one view) {run['selection_val_auc']:.4f}" in epoch_line
    assert any(f"selected epoch 1; {headline}" in line for line in log)

    # The run page: the headline with what it measures; the per-epoch figure labelled as the selection figure.
    page = html.unescape(client.get(f"/training/{run_id}").get_data(as_text=True))
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert f"Val ROC-AUC: {served:.4f} ({run['val_auc_measures']})" in text
    assert f"selection val ROC-AUC (one view) {run['selection_val_auc']:.4f}" in text
    assert val_auc.SELECTION_MEASURES in text

    # The model card and /models.
    model_card = (cfg.storage_dir / "models" / name / "model_card.md").read_text()
    assert f"- Headline: **{headline}**" in model_card and "selection val ROC-AUC" in model_card
    models = html.unescape(client.get("/models").get_data(as_text=True))
    shown = re.search(rf'id="val-auc-{version_id}">(.*?)</span>', models)
    assert shown is not None and shown.group(1) == headline

    # Listed among the runs, its result is an outcome (neutral), whether or not the gate promoted it.
    listing = html.unescape(client.get("/training").get_data(as_text=True))
    row = re.search(rf'href="/training/{run_id}">{run_id}</a>.*?</tr>', listing, re.S)
    assert row is not None and '<td class="run-message">' in row.group(0) and 'class="err"' not in row.group(0)
    assert run["message"] in row.group(0)


def test_reviewed_corrections_left_out_say_why(roots: Path, tmp_path: Path) -> None:
    """Reviewed additions: a copy of a dataset image, a quarter-turned copy of every dataset image, a fresh image.

    The turned copies whose originals the split puts in val or test are left out as their duplicates, the others
    join train (counted from the split itself: which images land in val and test is the split's business)."""
    spec = PreprocessSpec(image_size=64, channels=1, mean=(0.5,), std=(0.25,), views="dihedral")
    site = roots / "site"
    own = sorted(p for p in site.rglob("*") if p.is_file())
    additions: list[dict[str, object]] = []
    for i, original in enumerate(own):
        turned = tmp_path / f"turned-{i}.png"  # other bytes, the same picture
        PILImage.open(original).convert("L").rotate(90, expand=True).save(turned)
        additions.append({"file": str(turned), "label": original.parent.name, "relabelled": False})
    copy = own[0]
    fresh = sorted((roots / "multi" / "train" / "fractured").iterdir())[0]  # from the other source
    additions += [{"file": str(copy), "label": copy.parent.name, "relabelled": True},
                  {"file": str(fresh), "label": "fractured", "relabelled": True}]
    path = tmp_path / "data-spec.json"
    path.write_text(json.dumps([{"name": "site", "root": str(site), "additions": additions}]))
    args = get_args_parser().parse_args(["--data-spec", str(path), "--out", str(tmp_path / "out")])
    data = prepare_data(args, spec, tmp_path / "cache")

    held = len(data.split_index["val"]) + len(data.split_index["test"])  # own images only: additions join train
    assert 0 < held < len(own)
    assert data.corrections == {"offered": len(own) + 2, "used": len(own) - held + 1, "relabelled": 1,
                                "left_out": held + 1, "already_in_data": 1, "near_val_test": held}
    assert card.corrections_text(data.corrections) == (
        f"reviewed corrections trained on: {len(own) - held + 1} of {len(own) + 2} ({held + 1} left out: "
        f"1 already in the data, {held} a duplicate of a val/test image)")
    assert card.corrections_text({"offered": 2, "used": 2, "relabelled": 0, "left_out": 0}) == (
        "reviewed corrections trained on: 2 of 2")


def test_reviewed_additions_leave_the_datasets_own_val_and_test_where_they_were(roots: Path, tmp_path: Path) -> None:
    """Adding reviewed images must not move a dataset's own images between train, val and test (its val and test
    figures stay comparable): the split is drawn from the own images alone, whatever was added."""
    spec = PreprocessSpec(image_size=64, channels=1, mean=(0.5,), std=(0.25,), views="dihedral")
    site = roots / "site"
    fresh = sorted((roots / "multi" / "train" / "fractured").iterdir())[:3]  # from the other source

    def splits(additions: list[dict[str, object]], name: str) -> dict[str, set[str]]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps([{"name": "site", "root": str(site), "additions": additions}]))
        args = get_args_parser().parse_args(["--data-spec", str(path), "--out", str(tmp_path / name)])
        data = prepare_data(args, spec, tmp_path / "cache")
        return {s: {data.row_md5[r] for r in data.split_index[s]} for s in ("train", "val", "test")}

    before = splits([], "none")
    after = splits([{"file": str(f), "label": "fractured", "relabelled": False} for f in fresh], "added")
    assert before["val"] and before["test"]
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert after["train"] > before["train"] and len(after["train"] - before["train"]) == len(fresh)
