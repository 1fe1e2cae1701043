"""The JSON API's shapes against a real migrated SQLite and the embedded broker (no worker consumes here)."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import select
from web_client import make_client, post_files

from fracture.config import Settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Image, Job, JobStatus

JOB_KEYS = {"id", "status", "total", "processed", "failed", "model_version", "created_at", "finished_at",
            "started_at", "elapsed_s", "eta_s"}


def test_post_job_then_read_it_back(client: FlaskClient, sample_images: list[Path], settings: Settings) -> None:
    picked = sample_images[:3]
    response = post_files(client, [(p.read_bytes(), f"batch/{p.parent.name}/{p.name}") for p in picked])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) >= {"id", "status", "total"}
    assert body["status"] == "queued" and body["total"] == 3

    job = client.get(f"/api/jobs/{body['id']}").get_json()
    assert set(job) >= JOB_KEYS
    assert job["model_version"] == "v1"
    assert job["processed"] == 0 and job["finished_at"] is None

    # Committed before it was enqueued: the rows are there, keyed by generated names, never user names.
    with session_scope(settings.database_url) as session:
        stored = session.get(Job, body["id"])
        assert stored is not None and stored.enqueued_at is not None
        images = session.scalars(select(Image).where(Image.job_id == body["id"]).order_by(Image.seq)).all()
    assert [i.path for i in images] == [f"batch/{p.parent.name}/{p.name}" for p in picked]
    assert [i.storage_key for i in images] == [f"uploads/{body['id']}/{n:06d}" for n in (1, 2, 3)]
    for image, source in zip(images, picked, strict=True):
        assert (settings.storage_dir / image.storage_key).read_bytes() == source.read_bytes()

    listed = client.get("/api/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == [body["id"]]


def test_results_json_and_csv_have_one_row_per_file(client: FlaskClient, sample_images: list[Path]) -> None:
    files = [(p.read_bytes(), f"x/{n}-{p.name}") for n, p in enumerate(sample_images[:4])]
    files.append((b"these are notes, not an X-ray", "x/notes.txt"))
    job_id = post_files(client, files).get_json()["id"]

    rows = client.get(f"/api/jobs/{job_id}/results").get_json()["results"]
    assert [r["path"] for r in rows] == [name for _, name in files]
    assert set(rows[0]) >= {"image_id", "path", "prediction", "probability", "in_distribution", "ood_score",
                            "model_version", "error", "study_instance_uid", "sop_instance_uid"}
    assert rows[0]["study_instance_uid"] is None and rows[0]["sop_instance_uid"] is None  # not DICOM
    assert rows[0]["prediction"] is None  # no worker in this test: nothing classified yet
    assert rows[-1]["error"] == "not an image: unrecognised file format"
    assert rows[-1]["model_version"] == "v1"  # the refusal is recorded as a result at dispatch

    page = client.get(f"/api/jobs/{job_id}/results?offset=1&limit=2").get_json()["results"]
    assert [r["image_id"] for r in page] == [r["image_id"] for r in rows[1:3]]

    response = client.get(f"/api/jobs/{job_id}/results.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    table = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert table[0] == ["path", "prediction", "probability", "in_distribution", "ood_score", "model_version",
                        "error", "study_instance_uid", "sop_instance_uid"]
    assert len(table) == 1 + len(files)
    assert [r[0] for r in table[1:]] == [name for _, name in files]
    assert table[-1][6] == "not an image: unrecognised file format"

    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert (job["processed"], job["failed"], job["total"]) == (1, 1, 5)


def test_unknown_job_and_route_errors_are_json(client: FlaskClient) -> None:
    for url in ("/api/jobs/nope", "/api/jobs/nope/results", "/api/jobs/nope/results.csv", "/api/nothing"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "error" in response.get_json()
    response = client.delete("/api/jobs")
    assert response.status_code == 405 and "error" in response.get_json()
    response = client.post("/api/jobs", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "files" in response.get_json()["error"]


def test_models_and_health(client: FlaskClient) -> None:
    models = client.get("/api/models").get_json()
    assert models["active"] == "v1"
    (model,) = models["models"]
    assert model["status"] == "active" and model["threshold"] == 0.5 and "metrics" in model

    health = client.get("/api/health")
    assert health.status_code == 200
    body = health.get_json()
    assert body["database"] == "ok" and body["broker"] == "ok"
    assert body["model"]["active"] == "v1"
    assert body["workers"] == {"supported": False, "workers": []}  # the embedded broker cannot broadcast


def test_broker_down_keeps_the_job_and_says_so(settings: Settings, sample_images: list[Path]) -> None:
    from harness import free_port

    down = dataclasses.replace(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    client = make_client(down)
    response = post_files(client, [(sample_images[0].read_bytes(), "a.jpg")])
    assert response.status_code == 503
    body = response.get_json()
    assert "broker" in body["error"] and body["status"] == "queued"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, body["id"])
        assert job is not None and job.status == JobStatus.QUEUED and job.total == 1
        assert job.enqueued_at is None

    # Once the broker is back, the same job is dispatched again.
    again = make_client(settings).post(f"/api/jobs/{body['id']}/dispatch")
    assert again.status_code == 202 and again.get_json()["error"] is None
    with session_scope(settings.database_url) as session:
        assert session.get(Job, body["id"]).enqueued_at is not None  # type: ignore[union-attr]
    dispose_engines()
