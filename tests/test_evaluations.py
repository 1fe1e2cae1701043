"""Evaluations: the shipped release model measured on real images of the dataset, through the code and the queue.

The expected numbers are computed here, independently: distinct images by their bytes' MD5, the served
network's own probabilities (fracture.ml.inference.Predictor), scikit-learn at the version's threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from bad_files import dataset_file
from flask.testing import FlaskClient
from harness import WorkerFactory, free_port
from installation import LABELS, add_user, image_files, materialize
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, roc_auc_score
from sqlalchemy import select
from web_client import make_client

from fracture import datasets, evaluations
from fracture.config import Settings, get_settings
from fracture.db import session_scope
from fracture.ml.inference import Predictor
from fracture.models import Evaluation, ModelVersion, RunStatus
from fracture.registry import register_checkpoint
from fracture.storage import Storage
from trainer.acquisition import AUDIT
from trainer.evaluate_dataset import evaluate

RELEASE = Path(__file__).resolve().parent.parent / "fracture" / "release" / "model.pt"
TRUNCATED = "IMG0004134.jpg"  # a real JPEG of the dataset, cut short: undecodable
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_sample(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sample of the test and val splits (8 files per split and class), plus one truncated JPEG in test."""
    root = materialize(dataset_root, tmp_path_factory.mktemp("evalset"), per_class=8, splits="test,val")
    shutil.copyfile(dataset_file(dataset_root, "not fractured", TRUNCATED), root / "test" / "not fractured" / TRUNCATED)
    return root


def _release(settings: Settings) -> tuple[int, str, float]:
    """Register the shipped release checkpoint as `release-1` (a candidate; the tiny model stays active)."""
    with session_scope(settings.database_url) as session:
        version = register_checkpoint(session, Storage(settings.storage_dir), RELEASE, name="release-1")
        return version.id, version.name, version.threshold


def _ready_dataset(settings: Settings, root: Path, name: str = "external") -> int:
    with session_scope(settings.database_url) as session:
        dataset = datasets.create_dataset(session, name, "evaluation", "server", root)
        datasets.record_validation(session, dataset.id, "splits", {}, {}, {}, "test-fingerprint")
        return dataset.id


def _evaluate(settings: Settings, version_id: int, dataset_id: int, split: str | None) -> Evaluation:
    with session_scope(settings.database_url) as session:
        evaluation_id = evaluations.create_evaluation(session, version_id, dataset_id, split).id
    assert evaluate(settings, evaluation_id)
    with session_scope(settings.database_url) as session:
        evaluation = session.get_one(Evaluation, evaluation_id)
        session.expunge(evaluation)
    return evaluation


def _expected(root: Path, split: str, threshold: float) -> dict[str, object]:
    """Distinct images of `split` by MD5, the Predictor's probabilities, scikit-learn's figures."""
    files = image_files(root / split)
    first: dict[str, Path] = {}
    labels: dict[str, set[str]] = {}
    for path in files:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        first.setdefault(md5, path)
        labels.setdefault(md5, set()).add(path.parent.name)
    kept = [(first[md5], label) for md5, (label, *others) in labels.items() if not others]
    predictions = list(Predictor.from_file(RELEASE, batch_size=16).predict([path for path, _ in kept]))
    ok = [(label, p.probability) for (_, label), p in zip(kept, predictions, strict=True) if p.probability is not None]
    scores = [p.ood_score for p in predictions if p.probability is not None]
    assert None not in scores  # the release checkpoint carries an out-of-distribution detector
    y = np.array([1 if label == LABELS[0] else 0 for label, _ in ok])
    prob = np.array([probability for _, probability in ok])
    tn, fp, fn, tp = confusion_matrix(y, (prob >= threshold).astype(int), labels=[0, 1]).ravel()
    return {"files": len(files), "distinct": len(first), "conflicts": len(first) - len(kept), "n": len(ok),
            "undecodable": len(kept) - len(ok), "roc_auc": roc_auc_score(y, prob),
            "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn}, "positives": int(y.sum()),
            "ood_flagged": sum(score >= 1.0 for score in scores) / len(scores)}


def test_release_model_on_real_test_images_matches_scikit_learn_and_serves_its_plots(
    settings: Settings, client: FlaskClient, real_sample: Path,
) -> None:
    version_id, _, threshold = _release(settings)
    dataset_id = _ready_dataset(settings, real_sample)
    evaluation = _evaluate(settings, version_id, dataset_id, "test")
    expected = _expected(real_sample, "test", threshold)

    assert evaluation.status == RunStatus.DONE, evaluation.error
    m = evaluation.metrics
    assert m["split"] == "test" and m["threshold"] == threshold
    assert (m["files"], m["distinct_images"], m["label_conflicts"]) == (
        expected["files"], expected["distinct"], expected["conflicts"])
    assert m["n"] == expected["n"] < m["files"]  # the sample's copies of one image count once
    assert m["undecodable"] == expected["undecodable"] == 1
    assert m["undecodable_examples"][0]["file"] == f"test/not fractured/{TRUNCATED}"
    assert m["confusion"] == expected["confusion"]
    assert m["n_per_class"] == {"fractured": expected["positives"], "not fractured": m["n"] - expected["positives"]}
    assert m["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-9)
    c = m["confusion"]
    assert m["sensitivity"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
    assert m["specificity"] == pytest.approx(c["tn"] / (c["tn"] + c["fp"]))
    assert m["roc_auc"] > 0.9  # the release model on images of its own dataset
    assert m["ood_flagged"] == pytest.approx(expected["ood_flagged"], abs=1e-9)
    assert m["ood_flagged"] < 0.5  # images of its own dataset mostly look like its training data
    # Each figure's 95% interval: sensitivity's and specificity's scipy's exact binomial one of the confusion counts,
    # ROC-AUC's a bootstrap around the figure, narrower than the whole range.
    ci = m["intervals"]
    assert ci["sensitivity"] == pytest.approx(list(binomtest(c["tp"], c["tp"] + c["fn"]).proportion_ci()))
    assert ci["specificity"] == pytest.approx(list(binomtest(c["tn"], c["tn"] + c["fp"]).proportion_ci()))
    assert ci["roc_auc"][0] <= m["roc_auc"] <= ci["roc_auc"][1] and ci["roc_auc"][1] - ci["roc_auc"][0] < 0.3

    assert set(evaluation.plots) == {"roc", "confusion"}
    body = client.get(f"/api/evaluations/{evaluation.id}").get_json()
    assert body["status"] == "done" and body["model_version"] == "release-1" and body["dataset"] == "external"
    assert body["metrics"]["n"] == m["n"] and body["split"] == "test" and body["finished_at"]
    assert body["metrics"]["ood_flagged"] == m["ood_flagged"]
    html = client.get("/models").get_data(as_text=True)
    row = html.split(f'id="evaluation-{evaluation.id}"', 1)[1].split("</tr>", 1)[0]
    assert f'<td class="num ood-flagged">{100 * m["ood_flagged"]:.1f}%</td>' in row
    low, high = ci["sensitivity"]
    assert f'<div class="ci muted" title="95% interval: how far the figure could move on another sample of this ' \
           f'size">{low:.3f}–{high:.3f}</div>' in row.split('class="num sensitivity">', 1)[1]
    for name, url in body["plots"].items():
        assert url == f"/evaluations/{evaluation.id}/plots/{name}"
        plot = client.get(url)
        assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data.startswith(PNG)
        plot.close()
    assert client.get(f"/evaluations/{evaluation.id}/plots/curves").status_code == 404
    assert client.get("/evaluations/999/plots/roc").status_code == 404


def test_a_split_filter_evaluates_only_that_split(settings: Settings, real_sample: Path) -> None:
    version_id, _, threshold = _release(settings)
    dataset_id = _ready_dataset(settings, real_sample)
    val = _evaluate(settings, version_id, dataset_id, "val")
    expected = _expected(real_sample, "val", threshold)
    assert val.status == RunStatus.DONE, val.error
    assert (val.metrics["files"], val.metrics["n"], val.metrics["confusion"]) == (
        expected["files"], expected["n"], expected["confusion"])
    assert val.metrics["undecodable"] == 0  # the truncated file lies in test

    whole = _evaluate(settings, version_id, dataset_id, None)
    assert whole.metrics["split"] == "all" and whole.metrics["files"] == len(image_files(real_sample))
    assert whole.metrics["n"] > val.metrics["n"]


def test_a_model_without_an_out_of_distribution_detector_records_no_share(
    settings: Settings, client: FlaskClient, fracture_env: dict[str, str], real_sample: Path,
) -> None:
    tiny = int(fracture_env["FRACTURE_MODEL_VERSION_ID"])  # a checkpoint made before detectors existed
    evaluation = _evaluate(settings, tiny, _ready_dataset(settings, real_sample), "val")
    assert evaluation.status == RunStatus.DONE, evaluation.error
    assert evaluation.metrics["ood_flagged"] is None and evaluation.metrics["n"] > 0
    html = client.get("/models").get_data(as_text=True)
    row = html.split(f'id="evaluation-{evaluation.id}"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num ood-flagged">–</td>' in row


def test_refusals_are_clear_4xx_and_a_down_broker_fails_the_evaluation(
    settings: Settings, client: FlaskClient, fracture_env: dict[str, str], tmp_path: Path, real_sample: Path,
) -> None:
    version_id = int(fracture_env["FRACTURE_MODEL_VERSION_ID"])
    with session_scope(settings.database_url) as session:
        validating = datasets.create_dataset(session, "still-validating", "evaluation", "server", real_sample).id
    ready = _ready_dataset(settings, real_sample)

    cases = [
        ({"dataset_id": ready}, 400, "model_version"),
        ({"model_version": "no-such-model", "dataset_id": ready}, 404, "no-such-model"),
        ({"model_version": 999, "dataset_id": ready}, 404, "999"),
        ({"model_version": "v1"}, 400, "dataset_id"),
        ({"model_version": "v1", "dataset_id": 999}, 404, "no dataset with id 999"),
        ({"model_version": "v1", "dataset_id": validating}, 409, "not ready"),
        ({"model_version": version_id, "dataset_id": ready, "split": "holdout"}, 400, "split must be"),
        ({"model_version": version_id, "dataset_id": ready, "audit": "maybe"}, 400, "audit must be true or false"),
    ]
    for body, status, words in cases:
        response = client.post("/api/evaluations", json=body)
        assert response.status_code == status, (body, response.get_json())
        assert words.lower() in response.get_json()["error"].lower(), response.get_json()
    assert client.get("/api/evaluations/999").status_code == 404
    assert client.get("/api/evaluations?model_version=nope").status_code == 404

    reader = add_user(fracture_env, "reader")
    as_reader = make_client(settings, token=reader["token"])
    assert as_reader.post("/api/evaluations", json={"model_version": "v1", "dataset_id": ready}).status_code == 403
    assert as_reader.get("/api/evaluations").status_code == 200

    down = make_client(dataclasses.replace(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    response = down.post("/api/evaluations", json={"model_version": "v1", "dataset_id": ready})
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failed" and "queue was unavailable" in body["error"]
    with session_scope(settings.database_url) as session:
        row = session.get_one(Evaluation, body["id"])
        assert row.status == RunStatus.FAILED and row.error == evaluations.BROKER_DOWN


def test_models_page_form_queues_an_evaluation(settings: Settings, client: FlaskClient, real_sample: Path) -> None:
    dataset_id = _ready_dataset(settings, real_sample)
    html = client.get("/models").get_data(as_text=True)
    assert "Not evaluated on a registered dataset yet" in html and 'name="dataset_id"' in html
    with session_scope(settings.database_url) as session:
        version_id = session.scalars(select(ModelVersion.id)).one()
    response = client.post(f"/models/{version_id}/evaluate",
                           data={"dataset_id": dataset_id, "split": "val"}, follow_redirects=True)
    assert b"Evaluation #1 of v1 queued" in response.data
    html = client.get("/models").get_data(as_text=True)
    assert 'id="evaluation-1"' in html and "external" in html and "queued" in html


def test_evaluation_through_redis_and_a_real_trainer_worker(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, real_sample: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url}
    settings = get_settings(env)
    _, name, _ = _release(settings)
    dataset_id = _ready_dataset(settings, real_sample)
    celery_worker_proc.start(env, queues="training")
    client = make_client(settings)

    response = client.post("/api/evaluations", json={"model_version": name, "dataset_id": dataset_id, "split": "val",
                                                      "audit": True})
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["status"] == "queued" and set(created) == {"id", "status"}

    deadline = time.monotonic() + 120
    while (body := client.get(f"/api/evaluations/{created['id']}").get_json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"evaluation still {body['status']} after 120 s"
        time.sleep(0.5)
    assert body["status"] == "done", body["error"]
    assert body["metrics"]["n"] > 0 and body["metrics"]["roc_auc"] > 0.9
    assert {"sensitivity", "specificity", "accuracy", "confusion"} <= set(body["metrics"])
    # The robustness audit ran too: every change of the family on the same images, served as the workers serve.
    audit = body["metrics"]["robustness"]
    assert body["audit"] is True and [r["change"] for r in audit["rows"]] == [c.name for c in AUDIT]
    assert audit["sampled"] == audit["of"] == body["metrics"]["n"]
    assert all(r["n"] == body["metrics"]["n"] and 0 <= r["flagged"] <= 1 for r in audit["rows"])
    assert abs(audit["rows"][0]["roc_auc"] - body["metrics"]["roc_auc"]) < 0.05  # unchanged, decoded larger
    assert audit["worst"]["flagged"] == max(r["flagged"] for r in audit["rows"])
    # What a target reads, among the images not flagged, with its interval (none where a class has under two images
    # left); the unchanged images keep both classes.
    kept = [row["kept"] for row in audit["rows"] if row["kept"] and row["kept"]["intervals"]["roc_auc"]]
    assert kept and kept[0] is audit["rows"][0]["kept"]
    assert all(k["intervals"]["roc_auc"][0] <= k["roc_auc"] <= k["intervals"]["roc_auc"][1] for k in kept)

    models = {m["name"]: m for m in client.get("/api/models").get_json()["models"]}
    (listed,) = models[name]["evaluations"]
    assert listed["id"] == created["id"] and listed["metrics"] == body["metrics"]
    assert models["v1"]["evaluations"] == [] and "threshold" in models[name]  # existing fields kept
    by_version = client.get(f"/api/evaluations?model_version={name}").get_json()["evaluations"]
    assert [e["id"] for e in by_version] == [created["id"]]
    html = client.get("/models").get_data(as_text=True)
    assert f'id="evaluation-{created["id"]}"' in html and f"{body['metrics']['roc_auc']:.4g}" in html
    table = html.split(f'id="evaluation-robustness-{created["id"]}"', 1)[1].split("</details>", 1)[0]
    assert all(c.name in table for c in AUDIT)


def test_a_restart_sends_queued_evaluations_again(
    settings: Settings, fracture_env: dict[str, str], real_sample: Path,
) -> None:
    from fracture.queue import make_app, resume_unfinished

    version_id = int(fracture_env["FRACTURE_MODEL_VERSION_ID"])
    dataset_id = _ready_dataset(settings, real_sample)
    with session_scope(settings.database_url) as session:
        queued = evaluations.create_evaluation(session, version_id, dataset_id, "test").id
        ended = evaluations.create_evaluation(session, version_id, dataset_id, None).id
        evaluations.fail_evaluation(session, ended, "failed before the restart")
    assert resume_unfinished(make_app(settings), settings)["evaluations"] == [queued]
    broker = sqlite3.connect(settings.broker_url.split("///", 1)[1])
    try:
        (payload,), = broker.execute(
            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id WHERE q.name = 'training'"
        ).fetchall()
    finally:
        broker.close()
    assert "evaluations.run" in payload
