"""The out-of-distribution flag through the product: worker results, the JSON and CSV, the job page's banner and
filter, `fracture classify`; with the shipped release model (it has a detector) and an older checkpoint (none).

Real X-rays of the dataset and made-up images that are no X-ray at all (noise, a blank page, a colour gradient)
go through a real Celery worker and through `fracture classify` in a subprocess, on the same CPU.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from harness import WorkerFactory, wait_for
from installation import REPO_ROOT, VENV_BIN, create_job, job_state, new_installation
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client

from fracture import jobs
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Image, Job
from fracture.queue import enqueue_job, make_app
from worker.classify import _predictors, classify_chunk

RELEASE = REPO_ROOT / "fracture" / "release" / "model.pt"
BANNER = "images look unlike the data this model was trained on: their predictions are unreliable."
BADGE = "unreliable: unlike training data"
MADE_UP = ("noise.png", "blank.png", "photo.png")
NOT_AN_IMAGE = "notes.txt"


def write_made_up_images(folder: Path) -> None:
    """Images no X-ray model should trust: RGB noise, a blank white page, a colour 'photo' (gradient and shapes)."""
    rng = np.random.default_rng(11)
    PILImage.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "RGB").save(folder / "noise.png")
    PILImage.new("L", (300, 300), 255).save(folder / "blank.png")
    y, x = np.mgrid[0:240, 0:320]
    sky = np.stack([x * 255 // 319, y * 255 // 239, 255 - (x + y) * 255 // 558], axis=-1).astype(np.uint8)
    photo = PILImage.fromarray(sky, "RGB")
    photo.paste((200, 40, 40), (40, 140, 120, 220))  # a red box and a yellow sun
    photo.paste((250, 220, 60), (230, 30, 280, 80))
    photo.save(folder / "photo.png")


@dataclass
class Classified:
    """One finished job of the release model (through a real worker) and `fracture classify`'s CSV of the same files."""

    env: dict[str, str]
    settings: Settings
    job_id: str
    names: list[str]
    cli_rows: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def classified(sample_images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Classified]:
    root = tmp_path_factory.mktemp("ood")
    batch = root / "batch"
    batch.mkdir()
    for n, path in enumerate(sample_images[::6][:10]):  # real X-rays of every split and class
        shutil.copyfile(path, batch / f"{n:02d}-{path.name}")
    write_made_up_images(batch)
    (batch / NOT_AN_IMAGE).write_text("notes, not an image")
    files = sorted(batch.iterdir())

    # The release checkpoint is the installation's active version; small chunks so the job's counts add up.
    env = {**new_installation(root / "home", RELEASE), "CHUNK_SIZE": "5"}
    settings = get_settings(env)
    job_id = create_job(env, files)
    out = root / "results.csv"
    # The CPU path: `fracture classify` with the installation's active model, beside the worker.
    cli = subprocess.Popen([str(VENV_BIN / "fracture"), "classify", str(batch), "--out", str(out)], env=env,
                           cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = WorkerFactory(root / "logs")
    try:
        worker = workers.start(env)
        enqueue_job(make_app(settings), settings, job_id)
        wait_for(lambda: job_state(env, job_id)["status"] == "done", 240, f"job {job_id} to finish")
        assert worker.alive(), worker.log_text()
        _, stderr = cli.communicate(timeout=240)
    finally:
        cli.kill()
        workers.stop_all()
    assert cli.returncode == 0, stderr
    with open(out, newline="") as f:
        cli_rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    yield Classified(env, settings, job_id, [f.name for f in files], cli_rows)
    dispose_engines()


@pytest.fixture
def client(classified: Classified) -> FlaskClient:
    return make_client(classified.settings, RESULTS_PAGE_SIZE=2)


def _results(client: FlaskClient, job_id: str, query: str = "") -> list[dict[str, object]]:
    response = client.get(f"/api/jobs/{job_id}/results{query}")
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["results"])


def _csv(client: FlaskClient, url: str) -> list[dict[str, str]]:
    response = client.get(url)
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_release_results_carry_the_flag_in_json_csv_and_the_job_count(
    classified: Classified, client: FlaskClient,
) -> None:
    rows = _results(client, classified.job_id)
    assert [r["path"] for r in rows] == classified.names
    by_name = {str(r["path"]): r for r in rows}
    for row in rows:
        if row["error"]:
            assert row["in_distribution"] is None and row["ood_score"] is None, row
            continue
        score = row["ood_score"]
        assert isinstance(score, float) and score > 0, row
        assert row["in_distribution"] is (score < 1.0), row
    assert by_name[NOT_AN_IMAGE]["error"] and by_name[NOT_AN_IMAGE]["in_distribution"] is None
    # What is no X-ray at all is flagged by the release model's detector.
    for name in MADE_UP:
        assert by_name[name]["in_distribution"] is False, by_name[name]
        assert float(by_name[name]["ood_score"]) >= 1.0  # type: ignore[arg-type]
    # Most real X-rays of its own dataset are not (its threshold flags about 5% of images like its training data).
    real = [r for r in rows if str(r["path"])[:2].isdigit() and not r["error"]]
    assert sum(r["in_distribution"] is True for r in real) >= len(real) - 2

    flagged = sorted(str(r["path"]) for r in rows if r["in_distribution"] is False)
    job = client.get(f"/api/jobs/{classified.job_id}").get_json()
    assert job["out_of_distribution"] == len(flagged) >= len(MADE_UP)
    assert job["status"] == "done" and job["total"] == len(rows)

    # The CSV carries the same fields: true/false and the score, empty where there is none.
    table = _csv(client, f"/api/jobs/{classified.job_id}/results.csv")
    assert list(table[0]) == ["path", "prediction", "probability", "in_distribution", "ood_score", "model_version",
                              "error", "study_instance_uid", "sop_instance_uid"]
    for line in table:
        row = by_name[line["path"]]
        if row["in_distribution"] is None:
            assert line["in_distribution"] == line["ood_score"] == ""
        else:
            assert line["in_distribution"] == ("true" if row["in_distribution"] else "false")
            assert line["ood_score"] == f"{row['ood_score']:.6f}"

    # The JSON and CSV filters select the flagged results (and the others), pagination included.
    assert [r["path"] for r in _results(client, classified.job_id, "?in_distribution=false")] == flagged
    assert [r["path"] for r in _results(client, classified.job_id, "?in_distribution=false&offset=1&limit=2")] == \
        flagged[1:3]
    trusted = _results(client, classified.job_id, "?in_distribution=true")
    assert len(trusted) == len(rows) - len(flagged) - 1 and all(r["in_distribution"] is True for r in trusted)
    only = _csv(client, f"/api/jobs/{classified.job_id}/results.csv?in_distribution=false")
    assert [r["path"] for r in only] == flagged
    refused = client.get(f"/api/jobs/{classified.job_id}/results?in_distribution=maybe")
    assert refused.status_code == 400 and "in_distribution" in refused.get_json()["error"]


def test_cli_and_worker_give_the_same_scores_and_flags(classified: Classified, client: FlaskClient) -> None:
    worker_rows = {str(r["path"]): r for r in _results(client, classified.job_id)}
    assert set(classified.cli_rows) == set(worker_rows)
    for name, line in classified.cli_rows.items():
        row = worker_rows[name]
        assert bool(line["error"]) == bool(row["error"]), (line, row)
        if row["error"]:
            assert line["in_distribution"] == line["ood_score"] == ""
            continue
        assert line["prediction"] == row["prediction"], name
        assert float(line["probability"]) == pytest.approx(row["probability"], abs=1e-5)
        assert float(line["ood_score"]) == pytest.approx(row["ood_score"], abs=1e-5), name
        assert line["in_distribution"] == ("true" if row["in_distribution"] else "false"), name
        assert line["model_version"] == row["model_version"]


def test_job_page_shows_the_banner_and_filters_to_the_flagged_images(
    classified: Classified, client: FlaskClient,
) -> None:
    rows = _results(client, classified.job_id)
    flagged = [str(r["path"]) for r in rows if r["in_distribution"] is False]
    html = client.get(f"/jobs/{classified.job_id}").get_data(as_text=True)
    assert f"{len(flagged)} of {len(rows)} {BANNER}" in html
    assert re.search(r'<p id="ood-banner" class="banner warn" aria-live="polite" >', html)  # shown, not hidden
    assert f'href="/jobs/{classified.job_id}?flag=ood"' in html

    # Every page of the filtered listing (two rows a page) holds only flagged images, each with its badge.
    pages = -(-len(flagged) // 2)
    listed: list[str] = []
    for page in range(1, pages + 1):
        html = client.get(f"/jobs/{classified.job_id}?flag=ood&page={page}").get_data(as_text=True)
        assert f"Page {page} of {pages}" in html
        if page < pages:
            assert f'href="/jobs/{classified.job_id}?page={page + 1}&amp;flag=ood"' in html
        body = html.split('id="results"', 1)[1]
        paths = re.findall(r'<a class="open" href="[^"]*">([^<]*)</a>', body)
        assert body.count(BADGE) == len(paths)
        listed += paths
    assert listed == flagged
    assert 'id="ood-all"' in html

    # The unfiltered first page badges exactly its flagged rows.
    html = client.get(f"/jobs/{classified.job_id}?page=1").get_data(as_text=True)
    assert html.count(BADGE) == sum(r["in_distribution"] is False for r in rows[:2])
    listing = client.get("/jobs").get_data(as_text=True)
    assert f'<a href="/jobs/{classified.job_id}?flag=ood">{len(flagged)}</a>' in listing


def test_a_checkpoint_without_a_detector_still_serves_with_the_fields_empty(
    fracture_env: dict[str, str], settings: Settings, sample_images: list[Path],
) -> None:
    job_id = create_job(fracture_env, sample_images[:4])  # the tiny checkpoint: made before detectors existed
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(select(Image.id).where(Image.job_id == job_id)))
    _predictors.clear()  # a model cached under the same version id by an earlier test's installation
    outcome = classify_chunk(settings, job_id, ids)  # the worker's task body
    assert outcome.classified >= 3

    client = make_client(settings)
    rows = _results(client, job_id)
    assert all(r["in_distribution"] is None and r["ood_score"] is None for r in rows)
    assert sum(r["prediction"] is not None for r in rows) == outcome.classified
    table = _csv(client, f"/api/jobs/{job_id}/results.csv")
    assert len(table) == 4 and all(r["in_distribution"] == r["ood_score"] == "" for r in table)
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "done" and job["out_of_distribution"] == 0
    assert _results(client, job_id, "?in_distribution=false") == []
    html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert BANNER not in html and 'id="ood-banner"' not in html and BADGE not in html
    filtered = client.get(f"/jobs/{job_id}?flag=ood").get_data(as_text=True)
    assert "No image of this job was flagged" in filtered


def test_a_rerun_replaces_the_flag_and_the_job_recounts(fracture_env: dict[str, str], settings: Settings,
                                                       sample_images: list[Path]) -> None:
    job_id = create_job(fracture_env, sample_images[:3])
    version_id = int(fracture_env["FRACTURE_MODEL_VERSION_ID"])
    with session_scope(settings.database_url) as session:
        a, b, c = session.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.seq))
        jobs.record_outcomes(session, job_id, version_id, [
            jobs.Outcome(a, "fractured", 0.9, None, False, 1.7),
            jobs.Outcome(b, "not fractured", 0.1, None, False, 2.5),
            jobs.Outcome(c, "not fractured", 0.2, None, True, 0.4),
        ])
    with session_scope(settings.database_url) as session:
        assert session.get_one(Job, job_id).out_of_distribution == 2
        # The same image classified again (a redelivered chunk): its row, flag and score are replaced.
        jobs.record_outcomes(session, job_id, version_id, [jobs.Outcome(b, "not fractured", 0.1, None, True, 0.8)])
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.processed, job.out_of_distribution) == ("done", 3, 1)
    rows = _results(make_client(settings), job_id)
    assert [(r["in_distribution"], r["ood_score"]) for r in rows] == [(False, 1.7), (True, 0.8), (True, 0.4)]
