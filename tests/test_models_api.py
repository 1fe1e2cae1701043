"""Model versions on the web: list with decisions, promote by name or id, retire, roll back, compare; and hot reload
through the live system (a promoted version serves the next job, a job keeps the version it was created with)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from harness import LiveSystem, wait_for
from installation import add_user, create_job
from web_client import make_client

from fracture import datasets, evaluations
from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import ModelVersion
from fracture.registry import register_checkpoint
from fracture.storage import Storage
from trainer.evaluate_dataset import evaluate

PNG = b"\x89PNG\r\n\x1a\n"


def _candidate(settings: Settings, checkpoint: Path, name: str, decision: str | None = None) -> int:
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, Storage(settings.storage_dir), checkpoint, name=name)
        version.decision = decision
        s.flush()
        return version.id


def _models(client: FlaskClient) -> dict[str, dict[str, object]]:
    return {m["version"]: m for m in client.get("/api/models").get_json()["models"]}


def test_list_carries_version_status_metrics_evaluations_and_decision(
    client: FlaskClient, settings: Settings, tiny_checkpoint: Path,
) -> None:
    _candidate(settings, tiny_checkpoint, "v2", decision="not promoted: on dataset 'x' sensitivity 0.500 < 0.95")
    body = client.get("/api/models").get_json()
    v2 = _models(client)["v2"]
    assert body["active"] == "v1"
    assert {"id", "version", "name", "status", "metrics", "evaluations", "decision", "promoted_at",
            "retired_at"} <= set(v2)
    assert v2["status"] == "candidate" and v2["decision"].startswith("not promoted: on dataset 'x'")
    page = client.get("/models").get_data(as_text=True)
    assert "sensitivity 0.500 &lt; 0.95" in page and 'id="retire-' in page and 'id="compare"' in page


def test_promote_by_name_or_id_retire_and_roll_back(client: FlaskClient, settings: Settings,
                                                    tiny_checkpoint: Path) -> None:
    v2 = _candidate(settings, tiny_checkpoint, "v2")
    _candidate(settings, tiny_checkpoint, "v3")
    nothing = client.post("/api/models/rollback")
    assert nothing.status_code == 409 and "no previously active version" in nothing.get_json()["error"]

    promoted = client.post("/api/models/v2/promote")
    assert promoted.status_code == 200 and promoted.get_json()["status"] == "active"
    assert promoted.get_json()["decision"] == "promoted by hand by tester"
    assert client.post("/api/models/v3/promote").get_json()["version"] == "v3"
    assert client.post(f"/api/models/{v2}/promote").get_json()["version"] == "v2"  # by id, as before
    assert client.post("/api/models/nope/promote").status_code == 404

    refused = client.post("/api/models/v2/retire")
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "Cannot retire: v2 is the active version: promote another version " \
                                          "(or roll back) first."
    models = _models(client)
    assert [models[v]["status"] for v in ("v1", "v2", "v3")] == ["retired", "active", "retired"]

    # Rollback: the version active before the current one (v3, replaced by v2 just now) comes back.
    back = client.post("/api/models/rollback").get_json()
    assert back["active"]["version"] == "v3" and back["replaced"]["version"] == "v2"
    assert back["active"]["decision"] == "made active again by a rollback by tester, replacing v2"
    assert back["replaced"]["status"] == "retired" and back["replaced"]["decision"].startswith("retired by a rollback")
    assert client.get("/api/models").get_json()["active"] == "v3"

    retired = client.post("/api/models/v1/retire")
    assert retired.status_code == 200 and retired.get_json()["status"] == "retired"

    # The page's forms do the same (name in the URL), with messages instead of JSON errors.
    page = client.post("/models/v3/retire", follow_redirects=True).get_data(as_text=True)
    assert "Cannot retire: v3 is the active version" in page
    page = client.post("/models/rollback", follow_redirects=True).get_data(as_text=True)
    assert "Rolled back: v2 is active again; v3 is retired." in page
    page = client.post("/models/v3/promote", follow_redirects=True).get_data(as_text=True)
    assert "Model v3 is now the active model" in page


def test_retire_and_rollback_are_admin_only(settings: Settings, fracture_env: dict[str, str],
                                            tiny_checkpoint: Path) -> None:
    _candidate(settings, tiny_checkpoint, "v2")
    bob = add_user(fracture_env, "bob")
    as_bob = make_client(settings, token=bob["token"])
    for url in ("/api/models/v2/retire", "/api/models/rollback", "/api/models/v2/promote", "/models/v2/retire",
                "/models/rollback"):
        r = as_bob.post(url)
        assert r.status_code == 403 and b"Only an administrator" in r.data, url
    page = as_bob.get("/models").get_data(as_text=True)
    assert 'id="retire-' not in page and 'id="rollback"' not in page
    assert as_bob.get("/models/compare?a=v1&b=v2").status_code == 200  # reading is for everyone signed in


def test_compare_shows_both_versions_per_split_per_dataset_and_their_plots(
    client: FlaskClient, settings: Settings, tiny_checkpoint: Path, sample_dir: Path,
) -> None:
    v2 = _candidate(settings, tiny_checkpoint, "v2")
    storage = Storage(settings.storage_dir)
    metrics = {"val": {"n": 40, "roc_auc": 0.81, "sensitivity": 0.9, "specificity": 0.7, "threshold": 0.5},
               "test": {"n": 44, "roc_auc": 0.79, "sensitivity": 0.88, "specificity": 0.72, "threshold": 0.5}}
    with session_scope(settings.database_url) as s:
        for version in s.query(ModelVersion):
            key = f"models/{version.name}/plots/roc.png"
            storage.write_bytes(key, PNG + version.name.encode())
            version.plots = {"roc": key}
        s.get_one(ModelVersion, v2).metrics = metrics
        dataset = datasets.create_dataset(s, "site-2 locked", "evaluation", "server", sample_dir)
        datasets.record_validation(s, dataset.id, "splits", {}, {}, {}, "fp")
        datasets.set_gate(s, dataset.id, True)
        ids = [evaluations.create_evaluation(s, v.id, dataset.id, "test").id for v in s.query(ModelVersion)]
    for evaluation_id in ids:
        assert evaluate(settings, evaluation_id)

    body = client.get("/api/models/compare?a=v1&b=v2").get_json()
    assert (body["a"]["version"], body["b"]["version"]) == ("v1", "v2")
    rows = {r["split"]: r for r in body["splits"]}
    assert rows["val"]["a"] is None and rows["val"]["b"]["roc_auc"] == 0.81
    [row] = body["evaluations"]
    assert (row["dataset"], row["split"], row["gate"]) == ("site-2 locked", "test", True)
    assert row["a"]["n"] == row["b"]["n"] > 0 and "confusion" in row["a"]["plots"]
    assert body["a"]["plot_urls"]["roc"] != body["b"]["plot_urls"]["roc"]

    html = client.get("/models/compare?a=v1&b=v2").get_data(as_text=True)
    assert 'id="version-a">v1<' in html and 'id="version-b">v2<' in html
    assert 'id="compare-splits"' in html and "0.81" in html and 'id="compare-evaluations"' in html
    assert "site-2 locked" in html
    for url in (body["a"]["plot_urls"]["roc"], body["b"]["plot_urls"]["roc"], *row["b"]["plots"].values()):
        assert f'src="{url}"' in html or f'href="{url}"' in html
        plot = client.get(url)
        assert plot.data.startswith(PNG)
        plot.close()
    default = client.get("/api/models/compare").get_json()  # the active one and the newest other
    assert (default["a"]["version"], default["b"]["version"]) == ("v1", "v2")
    assert client.get("/models/compare?a=v1&b=missing").status_code == 404
    assert 'href="/models/compare?a=v1&amp;b=v2"' in client.get("/models").get_data(as_text=True)


# ---------------------------------------------------------------- hot reload, through the live system


def _results(system: LiveSystem, job_id: str) -> list[dict[str, object]]:
    def done() -> dict[str, object] | None:
        job = system.http.get(f"{system.url}/api/jobs/{job_id}", timeout=10).json()
        return job if job["status"] in ("done", "failed") else None

    job = wait_for(done, 120, f"job {job_id} to finish\n{system.logs()}", interval=0.3)
    assert job["status"] == "done", job  # type: ignore[index]
    body = system.http.get(f"{system.url}/api/jobs/{job_id}/results", timeout=10).json()
    return body["results"]  # type: ignore[no-any-return]


def _upload(system: LiveSystem, files: list[Path]) -> str:
    parts = [("files", (f.name, f.read_bytes())) for f in files]
    response = system.http.post(f"{system.url}/api/jobs", files=parts, timeout=60)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.timeout(300)
def test_a_promoted_version_serves_the_next_job_without_a_restart_and_a_job_keeps_its_version(
    live_system: LiveSystem, sample_images: list[Path], tiny_checkpoint: Path,
) -> None:
    from fracture.config import get_settings

    settings = get_settings(live_system.env)
    _candidate(settings, tiny_checkpoint, "v2-hot")
    files = sample_images[:3]
    pid = live_system.worker.pid
    before = _upload(live_system, files)
    assert {r["model_version"] for r in _results(live_system, before)} == {"v1"}
    waiting = create_job(live_system.env, files)  # created (and pinned to v1) before the promotion, sent after

    promoted = live_system.http.post(f"{live_system.url}/api/models/v2-hot/promote", timeout=10)
    assert promoted.status_code == 200, promoted.text
    after = _upload(live_system, files)
    assert {r["model_version"] for r in _results(live_system, after)} == {"v2-hot"}
    assert live_system.http.post(f"{live_system.url}/api/jobs/{waiting}/dispatch", timeout=10).status_code == 202
    assert {r["model_version"] for r in _results(live_system, waiting)} == {"v1"}
    assert {r["model_version"] for r in _results(live_system, before)} == {"v1"}
    text = live_system.http.get(f"{live_system.url}/api/jobs/{after}/results.csv", timeout=10).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(files) and {row["model_version"] for row in rows} == {"v2-hot"}
    assert live_system.worker.pid == pid and live_system.worker.alive()  # the same worker, never restarted
