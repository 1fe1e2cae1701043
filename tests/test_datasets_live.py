"""Datasets through the real processes: redis and a trainer worker validate and split; the broker down; the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from harness import WorkerFactory, free_port
from installation import VENV_BIN, materialize_both
from web_client import make_client

from fracture.config import get_settings
from fracture.db import dispose_engines


@pytest.fixture(scope="module")
def roots(dataset_root: Path, site_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATASET_ROOTS folder with real samples of both datasets."""
    return materialize_both(dataset_root, site_root, tmp_path_factory.mktemp("roots"))


def wait_ready(client: FlaskClient, dataset_id: int, timeout: float = 120) -> dict[str, Any]:
    """Poll GET /api/datasets/<id> until the worker has validated it."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/datasets/{dataset_id}").get_json()
        if body["status"] != "validating" or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_a_real_trainer_worker_validates_and_splits_through_redis(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, roots: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "DATASET_ROOTS": str(roots)}
    celery_worker_proc.start(env, queues="training")
    client = make_client(get_settings(env))
    try:
        posted = client.post("/api/datasets", json={"path": str(roots / "site"), "name": "site"})
        assert posted.status_code == 201 and posted.get_json()["status"] == "validating"
        ready = wait_ready(client, posted.get_json()["id"])
        assert ready["status"] == "ready", ready
        assert ready["counts"] == {"train": {"fractured": 10, "not fractured": 10}}
        assert ready["audit"]["files"] == 20 and ready["fingerprint"]

        split = client.post(f"/api/datasets/{ready['id']}/split", json={"fraction": 0.2, "seed": 1})
        assert split.status_code == 202
        parts = split.get_json()
        training = wait_ready(client, parts["training"]["id"])
        evaluation = wait_ready(client, parts["evaluation"]["id"])
        assert training["status"] == evaluation["status"] == "ready", (training, evaluation)
        assert evaluation["role"] == "evaluation" and evaluation["counts"]["train"] == {"fractured": 2,
                                                                                        "not fractured": 2}
    finally:
        dispose_engines()


def test_with_the_broker_down_the_dataset_is_invalid_with_the_reason(
    fracture_env: dict[str, str], roots: Path,
) -> None:
    env = {**fracture_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATASET_ROOTS": str(roots)}
    client = make_client(get_settings(env))
    try:
        response = client.post("/api/datasets", json={"path": str(roots / "site")})
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"].startswith("The task queue is unavailable") and body["status"] == "invalid"
        shown = client.get(f"/api/datasets/{body['id']}").get_json()
        assert shown["status"] == "invalid" and "task queue was unavailable" in shown["error"]
    finally:
        dispose_engines()


def fracture(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "fracture"), "datasets", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def test_cli_adds_lists_and_shows_datasets(fracture_env: dict[str, str], roots: Path) -> None:
    env = {**fracture_env, "DATASET_ROOTS": str(roots)}
    added = fracture(env, "add", str(roots / "multi"), "--name", "multi", "--role", "evaluation")
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["status"] == "ready" and shown["role"] == "evaluation" and shown["layout"] == "splits"
    assert shown["counts"] == {s: {"fractured": 6, "not fractured": 6} for s in ("train", "val", "test")}

    refused = fracture(env, "add", "/etc")
    assert refused.returncode != 0 and "is not under an allowed dataset root" in refused.stderr

    listed = fracture(env, "list")
    assert listed.returncode == 0 and "multi\tevaluation\tready\t36 files" in listed.stdout
    again = json.loads(fracture(env, "show", str(shown["id"])).stdout)
    assert again["fingerprint"] == shown["fingerprint"] and again["audit"]["leakage"] == shown["audit"]["leakage"]
