"""Trainings on registered datasets: the union of both shared datasets through redis and a real trainer worker,
refusals, cancel within an epoch, a failure's one sentence and its traceback in the log, locked images left out,
and a schedule due in seconds that a real beat and real workers turn into a trained, evaluated version.

Datasets are small real samples validated in process (trainer.dataset_validation); runs are dry runs or tiny recipes.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from flask.testing import FlaskClient
from harness import WorkerFactory, start_proc, wait_for
from installation import VENV_BIN, materialize_both
from web_client import make_client, ready_dataset

from fracture import trainings
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.ml.checkpoint import load_checkpoint
from fracture.models import ModelVersion, TrainingRun
from fracture.schedule_times import Spec
from trainer.dataset_scan import md5_file
from trainer.training_run import run_training

TINY = {"width": 8, "image_size": 64}  # a recipe that trains in seconds on two CPU cores


@pytest.fixture(scope="module")
def roots(dataset_root: Path, site_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATASET_ROOTS folder: `multi` (train/val/test, 6 per class), `site` (train, 10 per class), `one-class`."""
    root = materialize_both(dataset_root, site_root, tmp_path_factory.mktemp("roots"))
    one = root / "one-class"
    shutil.copytree(root / "site" / "train" / "fractured", one / "fractured")
    (one / "not fractured").mkdir()  # two class folders, but images of one class only
    return root


@pytest.fixture
def env(fracture_env: dict[str, str], roots: Path) -> dict[str, str]:
    return {**fracture_env, "DATASET_ROOTS": str(roots)}


@pytest.fixture
def cfg(env: dict[str, str]) -> Iterator[Settings]:
    yield get_settings(env)
    dispose_engines()



def wait_final(client: FlaskClient, run_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/trainings/{run_id}").get_json()
        if body["final"]:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"training run {run_id} still {body['status']} after {timeout} s: {body}")
        time.sleep(0.3)


def versions(cfg: Settings) -> int:
    with session_scope(cfg.database_url) as s:
        return s.query(ModelVersion).count()


def test_a_dry_run_on_the_union_of_both_datasets_trains_through_redis_and_a_real_worker(
    env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, roots: Path,
) -> None:
    env = {**env, "REDIS_URL": redis_url}
    cfg = get_settings(env)
    client = make_client(cfg)
    try:
        ids = [ready_dataset(client, cfg, roots / "multi", "multi"), ready_dataset(client, cfg, roots / "site", "site")]
        celery_worker_proc.start(env, queues="training")
        posted = client.post("/api/trainings", json={"dataset_ids": ids, "dry_run": True, **TINY})
        assert posted.status_code == 201 and posted.get_json()["status"] == "queued", posted.get_json()
        run = wait_final(client, posted.get_json()["id"])

        assert run["status"] == "done", run
        assert run["epoch"] == run["epochs"] == 1 and run["eta_s"] == 0 and run["elapsed_s"] > 0
        assert len(run["history"]["val_auc"]) == 1 and len(run["history"]["train_loss"]) == 1
        assert [d["name"] for d in run["datasets"]] == ["multi", "site"]
        assert run["recipe"] | TINY == run["recipe"] and run["recipe"]["views"] == "dihedral"
        with session_scope(cfg.database_url) as s:
            version = s.query(ModelVersion).filter_by(name=run["model_version"]).one()
            assert {"train", "val", "test"} <= set(version.metrics)
            version_id, version_metrics = version.id, version.metrics
            card = (cfg.storage_dir / "models" / version.name / "model_card.md").read_text()
        assert "multi (36)" in card and "site (20)" in card
        # The models page shows each split's figures with the 95% intervals the training recorded.
        low, high = version_metrics["test"]["intervals"]["specificity"]
        html = client.get("/models").get_data(as_text=True)
        assert f"{low:.3f}–{high:.3f}</div>" in html.split(f'id="model-{version_id}"', 1)[1].split("</table>", 1)[0]
        summary = json.loads((cfg.storage_dir / "runs" / str(run["id"]) / "model_card.json").read_text())
        assert summary["datasets"] == {"multi": 36, "site": 20}
        assert summary["splits"]["test"] and all(label in ("fractured", "not fractured")
                                                 for _, label in summary["splits"]["test"])

        log = client.get(run["log_url"])
        assert log.status_code == 200 and "epoch 1/1" in log.text and "registered model version" in log.text
        page = client.get(f"/training/{run['id']}")
        assert page.status_code == 200 and b"epoch 1/1" in page.data and b"training.js" in page.data
        listed = client.get("/api/trainings").get_json()["trainings"]
        assert [r["id"] for r in listed] == [run["id"]]
    finally:
        dispose_engines()


def test_evaluation_and_unready_datasets_are_refused(env: dict[str, str], cfg: Settings, roots: Path) -> None:
    client = make_client(cfg)
    locked = ready_dataset(client, cfg, roots / "multi", "multi", role="evaluation")
    site = ready_dataset(client, cfg, roots / "site", "site")
    refused = client.post("/api/trainings", json={"dataset_ids": [site, locked]})
    assert refused.status_code == 400
    assert "evaluation dataset" in refused.get_json()["error"] and "locked" in refused.get_json()["error"]

    pending = client.post("/api/datasets", json={"path": str(roots / "one-class"), "name": "pending"}).get_json()
    assert client.post("/api/trainings", json={"dataset_ids": [pending["id"]]}).status_code == 400
    assert client.post("/api/trainings", json={"dataset_ids": []}).status_code == 400
    assert client.post("/api/trainings", json={"dataset_ids": [site], "epochs": 0}).status_code == 400
    assert client.get("/api/trainings").get_json()["trainings"] == []

    page = client.get("/training")
    assert page.status_code == 200 and f'name="dataset_ids" value="{site}"'.encode() in page.data
    assert f'name="dataset_ids" value="{locked}"'.encode() not in page.data  # a locked dataset is not offered


def test_cancel_stops_a_running_training_within_one_epoch_and_registers_nothing(
    env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, roots: Path,
) -> None:
    env = {**env, "REDIS_URL": redis_url}
    cfg = get_settings(env)
    client = make_client(cfg)
    try:
        site = ready_dataset(client, cfg, roots / "site", "site")
        before = versions(cfg)
        # A queued run cancelled before any worker takes it ends at once, without training.
        queued = client.post("/api/trainings", json={"dataset_ids": [site], **TINY}).get_json()
        cancelled = client.post(f"/api/trainings/{queued['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
        assert client.post(f"/api/trainings/{queued['id']}/cancel").status_code == 409

        run_id = client.post("/api/trainings", json={"dataset_ids": [site], "epochs": 40, **TINY}).get_json()["id"]
        celery_worker_proc.start(env, queues="training")
        deadline = time.monotonic() + 180
        while (body := client.get(f"/api/trainings/{run_id}").get_json())["epoch"] < 1:
            assert body["status"] in ("queued", "running"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert body["eta_s"] is not None and body["eta_s"] > 0
        asked = client.post(f"/api/trainings/{run_id}/cancel")
        assert asked.status_code == 202 and asked.get_json()["cancel_requested"] is True
        seen = asked.get_json()["epoch"]

        run = wait_final(client, run_id)
        assert run["status"] == "cancelled", run
        assert run["epoch"] <= seen + 1 < 40 and run["model_version"] is None
        assert versions(cfg) == before
        folder = cfg.storage_dir / "runs" / str(run_id)
        assert sorted(p.name for p in folder.iterdir()) == ["train.log"]  # the checkpoints are removed
        assert "cancelled on request" in client.get(run["log_url"]).text
        assert client.get(f"/api/trainings/{queued['id']}").get_json()["epoch"] == 0
    finally:
        dispose_engines()


def test_a_run_started_from_a_version_fine_tunes_its_weights_and_refuses_another_network(
    env: dict[str, str], cfg: Settings, roots: Path,
) -> None:
    """`start_from` names a registered version: the run trains from its stored weights (the trainer's --init), says
    so in its JSON, page and log; a recipe of another width fails with which; an unknown version or a learning rate
    out of range is refused before a run is recorded."""
    client = make_client(cfg)
    site = ready_dataset(client, cfg, roots / "site", "site")
    first_id = client.post("/api/trainings", json={"dataset_ids": [site], "dry_run": True, **TINY}).get_json()["id"]
    assert run_training(cfg, first_id) is not None
    origin = client.get(f"/api/trainings/{first_id}").get_json()["model_version"]
    assert f'<option value="{origin}">'.encode() in client.get("/training").data  # offered on the start form

    for body, reason in (({"start_from": "no-such-version"}, "start_from names no model version"),
                         ({"lr": 0}, "lr must be a number from 1e-05 to 0.1"),
                         ({"lr": "fast"}, "lr must be a number"),
                         ({"interpolate": 0}, "interpolate must be a number from 0.05 to 1"),
                         ({"interpolate": 0.5}, "interpolate below 1 needs start_from")):
        refused = client.post("/api/trainings", json={"dataset_ids": [site], **TINY, **body})
        assert refused.status_code == 400 and reason in refused.get_json()["error"], refused.get_json()
    assert [r["id"] for r in client.get("/api/trainings").get_json()["trainings"]] == [first_id]

    posted = client.post("/api/trainings", json={"dataset_ids": [site], "dry_run": True, **TINY,
                                                 "start_from": origin, "lr": 1e-5, "seed": 1,
                                                 "interpolate": 0.5})
    assert posted.status_code == 201, posted.get_json()
    run_id = posted.get_json()["id"]
    assert run_training(cfg, run_id) is not None
    run = client.get(f"/api/trainings/{run_id}").get_json()
    assert run["status"] == "done" and run["recipe"]["lr"] == 1e-5 and run["recipe"]["seed"] == 1
    assert run["recipe"]["interpolate"] == 0.5
    with session_scope(cfg.database_url) as s:
        origin_id = s.query(ModelVersion).filter_by(name=origin).one().id
    assert run["start_from"] == {"id": origin_id, "name": origin}
    stored = cfg.storage_dir / "models" / origin / "model.pt"
    warm = load_checkpoint(cfg.storage_dir / "models" / run["model_version"] / "model.pt")
    assert warm.meta["init"] == str(stored) and warm.meta["interpolate"] == 0.5
    start = load_checkpoint(stored)
    # Another seed, so another random start: one step at 1e-5 leaves the convolutions the version's only if they
    # started from them.
    for name, value in start.model.state_dict().items():
        if name.endswith("conv1.weight"):
            assert torch.allclose(warm.model.state_dict()[name], value, atol=1e-4), name
    assert f"started from the weights of {stored}" in client.get(run["log_url"]).text
    assert f"fine-tuned from <a href=\"/models\">{origin}</a>" in client.get(f"/training/{run_id}").data.decode()

    other = client.post("/api/trainings", json={"dataset_ids": [site], "dry_run": True, "image_size": 64,
                                                "width": 16, "start_from": origin}).get_json()["id"]
    assert run_training(cfg, other) is None
    failed = client.get(f"/api/trainings/{other}").get_json()
    assert failed["status"] == "failed" and "are another network's: width 8 (this run: 16)" in failed["error"]


def test_a_failed_run_shows_one_sentence_and_logs_the_traceback(
    env: dict[str, str], cfg: Settings, roots: Path,
) -> None:
    client = make_client(cfg)
    one = ready_dataset(client, cfg, roots / "one-class", "one-class")
    run_id = client.post("/api/trainings", json={"dataset_ids": [one], "dry_run": True, **TINY}).get_json()["id"]
    assert run_training(cfg, run_id) is None  # the task's body, in process

    run = client.get(f"/api/trainings/{run_id}").get_json()
    assert run["status"] == "failed"
    assert run["error"] == ("The training failed: the dataset 'one-class' has only one class ('fractured'); "
                            "training needs images of both classes.")
    log = client.get(run["log_url"]).text
    assert "Traceback (most recent call last)" in log and "TrainingDataError" in log
    page = client.get(f"/training/{run_id}").data.decode()
    assert run["error"].replace("'", "&#39;") in page and "Traceback" in page  # the sentence, and the log below
    assert "Traceback" not in client.get("/training").data.decode()


def test_images_of_a_ready_evaluation_dataset_are_left_out_of_training(
    env: dict[str, str], cfg: Settings, roots: Path, tmp_path: Path,
) -> None:
    # An evaluation dataset holding copies of three images of each class of `site`, under DATASET_ROOTS.
    held = roots / f"held-{tmp_path.name}"
    for label in ("fractured", "not fractured"):
        (held / label).mkdir(parents=True)
        for f in sorted((roots / "site" / "train" / label).iterdir())[:3]:
            shutil.copyfile(f, held / label / f.name)
    try:
        client = make_client(cfg)
        ready_dataset(client, cfg, held, "held", role="evaluation")
        site = ready_dataset(client, cfg, roots / "site", "site")
        run_id = client.post("/api/trainings", json={"dataset_ids": [site], "dry_run": True, **TINY}).get_json()["id"]
        assert run_training(cfg, run_id) is not None
        summary = json.loads((cfg.storage_dir / "runs" / str(run_id) / "model_card.json").read_text())
        copied = {md5_file(f) for f in held.rglob("*.*")}
        assert summary["locked_out"]["exact"] == len(copied) and summary["locked_out"]["total"] >= len(copied)
        assert summary["audit"]["files"] <= 20 - len(copied)  # the audit (and the split) saw only the rest
        assert not copied & {md5_file(Path(p)) for p, _ in summary["splits"]["test"]}
        card = (cfg.storage_dir / "runs" / str(run_id) / "model_card.md").read_text()
        assert f"locked evaluation dataset holds them: {summary['locked_out']['total']} distinct images" in card
    finally:
        shutil.rmtree(held)


def test_a_box_weight_trains_on_the_fracture_boxes_in_its_datasets_folder(
    env: dict[str, str], cfg: Settings, roots: Path, site_root: Path, tmp_path: Path,
) -> None:
    """A training with a box weight gathers the boxes.csv at its datasets' roots (file names resolved and hashed),
    and teaches the map with those of its training images; without boxes, or with a row that is not a box, the run
    fails before training with one sentence that says which."""
    boxed = roots / f"boxed-{tmp_path.name}"
    shutil.copytree(roots / "site", boxed)
    fractured = {f.name: f for f in (boxed / "train" / "fractured").iterdir()}
    with open(site_root / "boxes.csv", newline="") as f:  # the site's own boxes of these images, by file name
        rows = [r for r in csv.DictReader(f) if r["filename"] in fractured and r["class"] != "humerus"]
    assert rows
    fields = ["filename", "x0", "y0", "x1", "y1"]
    with open(boxed / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([fields, *([r[k] for k in fields] for r in rows)])
    try:
        client = make_client(cfg)
        boxed_id = ready_dataset(client, cfg, boxed, "boxed")
        plain_id = ready_dataset(client, cfg, roots / "site", "site")
        resp = client.post("/api/trainings", json={"dataset_ids": [boxed_id], "dry_run": True, "box_weight": 0.5,
                                                    **TINY})
        assert resp.status_code == 201, resp.get_json()
        run_id = resp.get_json()["id"]
        assert client.get(f"/api/trainings/{run_id}").get_json()["recipe"]["box_weight"] == "0.5"
        assert run_training(cfg, run_id) is not None
        folder = cfg.storage_dir / "runs" / str(run_id)
        summary = json.loads((folder / "model_card.json").read_text())
        tested = {md5_file(Path(p)) for p, _ in summary["splits"]["test"]}
        with_boxes = {md5_file(fractured[r["filename"]]) for r in rows} - tested  # in train or val
        log = client.get(client.get(f"/api/trainings/{run_id}").get_json()["log_url"]).text
        found = re.search(r"box supervision: (\d+) fractured training images with boxes, weight 0.5", log)
        assert found and 0 < int(found[1]) <= len(with_boxes), log
        ckpt = load_checkpoint(folder / "model.pt")
        assert ckpt.meta["box_weight"] == 0.5 and ckpt.meta["boxes"] == str(folder / "boxes.csv")
        assert ckpt.args.pooling == "mean"  # the recipe's default
        # The pooling is a recipe field too: the same training with the log-mean-exp of the map as its logit.
        run_id = client.post("/api/trainings", json={"dataset_ids": [boxed_id], "dry_run": True, "box_weight": 0.5,
                                                     "pooling": "lse", **TINY}).get_json()["id"]
        assert client.get(f"/api/trainings/{run_id}").get_json()["recipe"]["pooling"] == "lse"
        assert run_training(cfg, run_id) is not None
        assert load_checkpoint(cfg.storage_dir / "runs" / str(run_id) / "model.pt").args.pooling == "lse"

        for ids, weight, reason in (
                ([plain_id], 1, "a box weight needs fracture boxes, and none of the datasets ('site') has a "
                                "boxes.csv at the root of its folder"),
                ([boxed_id], "0.2", "boxes.csv, line 2: a box is 0 <= x0 < x1 <= 1")):
            if weight == "0.2":
                (boxed / "boxes.csv").write_text("filename,x0,y0,x1,y1\n" + f"{rows[0]['filename']},0.5,0.1,0.4,0.2\n")
            run_id = client.post("/api/trainings", json={"dataset_ids": ids, "dry_run": True, "box_weight": weight,
                                                         **TINY}).get_json()["id"]
            assert run_training(cfg, run_id) is None
            run = client.get(f"/api/trainings/{run_id}").get_json()
            assert run["status"] == "failed" and reason in run["error"], run["error"]
        bad = client.post("/api/trainings", json={"dataset_ids": [boxed_id], "box_weight": 3, **TINY})
        assert bad.status_code == 400 and "box_weight must be one of 0, 0.2, 0.5, 1, not '3'" in bad.get_json()["error"]
        bad = client.post("/api/trainings", json={"dataset_ids": [boxed_id], "pooling": "max", **TINY})
        assert bad.status_code == 400 and "pooling must be one of mean, lse, not 'max'" in bad.get_json()["error"]
    finally:
        shutil.rmtree(boxed)


@pytest.mark.slow
def test_a_schedule_due_in_seconds_trains_on_both_datasets_through_beat_and_real_workers(
    env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, roots: Path, tmp_path: Path,
) -> None:
    """Beat ticks, the inference worker starts the due run, the trainer trains it; the version is evaluated."""
    env = {**env, "REDIS_URL": redis_url, "SCHEDULES_TICK_S": "1", "REAPER_INTERVAL_S": "3600"}
    cfg = get_settings(env)
    client = make_client(cfg)
    beat = None
    try:
        ids = [ready_dataset(client, cfg, roots / "multi", "multi"), ready_dataset(client, cfg, roots / "site", "site")]
        celery_worker_proc.start(env)  # runs schedules.tick
        celery_worker_proc.start(env, queues="training")
        with session_scope(cfg.database_url) as s:
            schedule = trainings.add_schedule(s, "soon", Spec("every", interval_minutes=60),
                                              {"dataset_ids": ids, "epochs": 1, **TINY})
            schedule.next_run_at = datetime.now(UTC) + timedelta(seconds=3)
            schedule_id = schedule.id
        beat = start_proc("beat", [str(VENV_BIN / "celery"), "-A", "worker.app", "beat", "--loglevel", "INFO",
                                   "--schedule", str(tmp_path / "beat-schedule")], env, tmp_path / "logs")

        def scheduled_run() -> int | None:
            with session_scope(cfg.database_url) as s:
                return s.query(TrainingRun.id).filter_by(schedule_id=schedule_id).scalar()

        run = wait_final(client, int(wait_for(scheduled_run, 120, "the scheduled run")))  # type: ignore[arg-type]
        assert run["status"] == "done", run
        assert run["schedule_id"] == schedule_id and [d["name"] for d in run["datasets"]] == ["multi", "site"]
        with session_scope(cfg.database_url) as s:
            version = s.query(ModelVersion).filter_by(name=run["model_version"]).one()
            assert {"train", "val", "test"} <= set(version.metrics)

        # The new version measured on the second site's data through the API and the same trainer worker.
        posted = client.post("/api/evaluations", json={"model_version": run["model_version"], "dataset_id": ids[1]})
        assert posted.status_code == 201, posted.get_json()
        deadline = time.monotonic() + 180
        while (evaluation := client.get(f"/api/evaluations/{posted.get_json()['id']}").get_json())["status"] != "done":
            assert evaluation["status"] in ("queued", "running") and time.monotonic() < deadline, evaluation
            time.sleep(0.5)
        metrics = evaluation["metrics"]
        assert metrics["n"] == 20 and metrics["n_per_class"] == {"fractured": 10, "not fractured": 10}
        assert {"roc_auc", "sensitivity", "specificity"} <= set(metrics)
    finally:
        if beat is not None:
            beat.stop()
        dispose_engines()
