"""The server-rendered pages: upload, jobs, one job, models with plots, training."""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client, post_files

from fracture.config import Settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Dataset, ModelVersion, Schedule, TrainingRun
from fracture.storage import Storage


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    yield make_client(settings, RESULTS_PAGE_SIZE=2)
    dispose_engines()


def test_upload_page_offers_a_folder_and_files(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'<input type="file" id="dir-input" name="files" webkitdirectory', html)
    assert re.search(r'<input type="file" id="file-input" name="files" multiple', html)
    assert "Active model: <strong>v1</strong>" in html
    assert 'id="submit" >' in html or 'id="submit">' in html  # enabled
    assert "no-model" not in html


def test_job_pages_show_progress_results_and_csv(client: FlaskClient, sample_images: list[Path]) -> None:
    files = [(p.read_bytes(), f"set/{n}.jpg") for n, p in enumerate(sample_images[:5])]
    job_id = post_files(client, files).get_json()["id"]

    listing = client.get("/jobs").get_data(as_text=True)
    assert f'href="/jobs/{job_id}"' in listing and "set (5 files)" in listing

    html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert '<progress id="progress" max="5" value="0">' in html
    assert '<strong id="progress-text" aria-live="polite">0 / 5</strong>' in html
    assert f'id="download-csv" href="/api/jobs/{job_id}/results.csv"' in html
    assert "set/0.jpg" in html and "set/1.jpg" in html and "set/2.jpg" not in html  # page 1 of 3
    assert "Page 1 of 3" in html
    page3 = client.get(f"/jobs/{job_id}?page=3").get_data(as_text=True)
    assert "set/4.jpg" in page3 and "set/0.jpg" not in page3

    missing = client.get("/jobs/does-not-exist")
    assert missing.status_code == 404 and b"There is no job with id does-not-exist" in missing.data


def _png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_models_page_shows_metrics_and_serves_plots_by_recorded_key(client: FlaskClient, settings: Settings) -> None:
    png = _png()
    Storage(settings.storage_dir).write_bytes("models/v1/plots/roc.png", png)
    with session_scope(settings.database_url) as session:
        version = session.scalars(select(ModelVersion)).one()
        version.metrics = {"val": {"auc": 0.91234, "accuracy": 0.8}, "test": {"auc": 0.9}, "epochs": 3}
        version.plots = {"roc": "models/v1/plots/roc.png", "bad": "../../etc/passwd"}
        version_id = version.id

    html = client.get("/models").get_data(as_text=True)
    assert "v1" in html and "active" in html and "0.9123" in html and "epochs: 3" in html
    assert f'src="/models/{version_id}/plots/roc"' in html

    plot = client.get(f"/models/{version_id}/plots/roc")
    assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data == png
    plot.close()
    for url in (f"/models/{version_id}/plots/missing", f"/models/{version_id}/plots/bad",
                f"/models/{version_id}/plots/..%2F..%2Fetc%2Fpasswd", "/models/999/plots/roc"):
        assert client.get(url).status_code == 404, url


def test_training_page_adds_schedules_and_queues_a_retrain(client: FlaskClient, settings: Settings) -> None:
    assert b"No training runs yet" in client.get("/training").data

    with session_scope(settings.database_url) as session:
        dataset = Dataset(name="wrists", role="training", status="ready", source="folder", root="/nowhere")
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    response = client.post("/training/schedules", data={"name": "nightly", "kind": "every", "interval": "1440",
                                                        "unit": "minutes", "dataset_ids": str(dataset_id)},
                           follow_redirects=True)
    assert b"Schedule &#39;nightly&#39; added: every day" in response.data
    bad = client.post("/training/schedules", data={"kind": "every", "interval": "0", "dataset_ids": str(dataset_id)},
                      follow_redirects=True)
    assert b"at least 1 minute" in bad.data

    # "Retrain now" trains on FRACTURE_DATASET: refused without it (it could only fail), queued with it.
    refused = client.post("/training/retrain")
    assert refused.status_code == 409 and b"FRACTURE_DATASET" in refused.data
    with_dataset = make_client(replace(settings, dataset_dir=settings.home))
    assert b'id="retrain"' in with_dataset.get("/training").data
    response = with_dataset.post("/training/retrain", follow_redirects=True)
    assert b"Training run #1 queued" in response.data
    with session_scope(settings.database_url) as session:
        (schedule,) = session.scalars(select(Schedule)).all()
        assert (schedule.name, schedule.interval_minutes, schedule.enabled) == ("nightly", 1440, True)
        (run,) = session.scalars(select(TrainingRun)).all()
        assert run.status == "queued"
    # The message really sits on the embedded broker's training queue, addressed to the task by name.
    broker = sqlite3.connect(settings.broker_url.split("///", 1)[1])
    try:
        messages = broker.execute(
            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id WHERE q.name = 'training'"
        ).fetchall()
    finally:
        broker.close()
    assert len(messages) == 1 and "training.retrain" in messages[0][0]
