"""Corrections: reviews through the API (who, when, progress, refusals, access), the reviews CSV, reviewed images
added to a training dataset (once, never with a locked evaluation dataset's images) and the next training on it.

Jobs and their results are recorded through the core (fracture.jobs) from real X-rays: the worker is not the
point here. Datasets are small real samples validated in process; the training is a tiny dry run in process.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from installation import add_user, bearer, create_job, materialize
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client, ready_dataset

from fracture import jobs
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.image_hashes import dihedral_hashes, near_any
from fracture.ml.preprocess import decode
from fracture.models import Dataset, DatasetAddition, Image, Job, ModelVersion, User
from trainer.dataset_scan import Sample, fingerprint, md5_file, scan
from trainer.training_run import run_training

TINY = {"width": 8, "image_size": 64, "dry_run": True}


@pytest.fixture(scope="module")
def roots(dataset_root: Path, site_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATASET_ROOTS: `site` (train, 10 per class: the training dataset), `held` (2 per class of the first
    dataset's val split: the locked evaluation dataset), `pool` (its test split: images in neither)."""
    root = tmp_path_factory.mktemp("roots")
    materialize(site_root, root / "site", per_class=10)
    materialize(dataset_root, root / "multi-val", per_class=2, splits="val")
    shutil.move(root / "multi-val" / "val", root / "held")
    materialize(dataset_root, root / "pool", per_class=6, splits="test")
    return root


@pytest.fixture
def cfg(fracture_env: dict[str, str], roots: Path) -> Iterator[Settings]:
    yield get_settings({**fracture_env, "DATASET_ROOTS": str(roots)})
    dispose_engines()


@pytest.fixture
def admin(cfg: Settings) -> FlaskClient:
    return make_client(cfg)


def classified(env: dict[str, str], files: list[Path], prediction: str = "fractured",
               owner: str | None = None) -> tuple[str, list[int]]:
    """A job of `files`, every image classified `prediction` by the active model; (job id, image ids)."""
    job_id = create_job(env, files)
    with session_scope(get_settings(env).database_url) as s:
        job = s.get_one(Job, job_id)
        if owner is not None:
            job.owner_id = s.scalars(select(User.id).where(User.username == owner)).one()
        ids = list(s.scalars(select(Image.id).where(Image.job_id == job_id).order_by(Image.seq)))
        assert job.model_version_id is not None
        jobs.record_outcomes(s, job_id, job.model_version_id,
                             [jobs.Outcome(i, prediction=prediction, probability=0.75) for i in ids])
    return job_id, ids



def review_url(job_id: str, image_id: int) -> str:
    return f"/api/jobs/{job_id}/images/{image_id}/review"


def test_a_review_keeps_who_and_when_counts_in_the_progress_and_is_refused_where_it_must_be(
    fracture_env: dict[str, str], settings: Settings, client: FlaskClient, sample_images: list[Path],
) -> None:
    job_id, ids = classified(fracture_env, sample_images[:3])
    before = datetime.now(UTC)
    put = client.put(review_url(job_id, ids[0]), json={"label": "not fractured"})
    assert put.status_code == 200, put.get_json()
    body = put.get_json()
    review = body["review"]
    assert review["label"] == "not fractured" and review["prediction"] == "fractured" and review["correct"] is False
    assert review["reviewer"] == "tester" and review["image_id"] == ids[0]
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(review["reviewed_at"]) <= datetime.now(UTC)
    assert body["progress"] == {"total": 3, "reviewed": 1, "correct": 0, "wrong": 1}

    # The latest review of an image counts: changing it replaces it.
    again = client.put(review_url(job_id, ids[0]), json={"label": "fractured"}).get_json()
    assert again["review"]["correct"] is True
    assert again["progress"] == {"total": 3, "reviewed": 1, "correct": 1, "wrong": 0}
    client.put(review_url(job_id, ids[1]), json={"label": "not fractured"})
    listed = client.get(f"/api/jobs/{job_id}/reviews").get_json()
    assert [r["image_id"] for r in listed["reviews"]] == ids[:2]
    assert listed["progress"] == {"total": 3, "reviewed": 2, "correct": 1, "wrong": 1}

    cleared = client.delete(review_url(job_id, ids[0]))
    assert cleared.status_code == 200 and cleared.get_json()["cleared"] is True
    assert cleared.get_json()["progress"] == {"total": 3, "reviewed": 1, "correct": 0, "wrong": 1}

    # A label the model does not have, no label, a body that is not JSON: 400 with the labels it takes.
    for bad in ({"label": "broken"}, {}, None):
        refused = client.put(review_url(job_id, ids[2]), json=bad) if bad is not None else client.put(
            review_url(job_id, ids[2]), data="label=fractured")
        assert refused.status_code == 400 and "'fractured', 'not fractured'" in refused.get_json()["error"]
    # An image of another job, a missing image: 404; an image without a prediction yet: 409.
    other_id, other_ids = classified(fracture_env, sample_images[3:4])
    assert client.put(review_url(job_id, other_ids[0]), json={"label": "fractured"}).status_code == 404
    assert client.delete(review_url(job_id, 10**6)).status_code == 404
    pending = create_job(fracture_env, sample_images[4:5])
    with session_scope(settings.database_url) as s:
        pending_image = s.scalars(select(Image.id).where(Image.job_id == pending)).one()
    unclassified = client.put(review_url(pending, pending_image), json={"label": "fractured"})
    assert unclassified.status_code == 409 and "no prediction" in unclassified.get_json()["error"]

    # A reader (not an admin) reviews the jobs they see; someone else's job answers like a missing one.
    reader = add_user(fracture_env, "reader")
    as_reader = make_client(settings, token=reader["token"])
    assert as_reader.put(review_url(job_id, ids[2]), json={"label": "fractured"}).status_code == 404
    assert as_reader.delete(review_url(job_id, ids[1])).status_code == 404
    assert as_reader.get(f"/api/jobs/{job_id}/reviews.csv").status_code == 404
    own_id, own_ids = classified(fracture_env, sample_images[:1], owner="reader")
    mine = as_reader.put(review_url(own_id, own_ids[0]), json={"label": "fractured"})
    assert mine.status_code == 200 and mine.get_json()["review"]["reviewer"] == "reader"
    refused = as_reader.post(f"/api/jobs/{own_id}/add-to-dataset", json={"dataset_id": 1})
    assert refused.status_code == 403  # adding to a training dataset is for admins
    assert client.get(f"/api/jobs/{job_id}/reviews").get_json()["progress"]["reviewed"] == 1  # untouched


def test_the_reviews_csv_has_every_reviewed_image_with_formula_like_cells_neutralised(
    fracture_env: dict[str, str], client: FlaskClient, sample_images: list[Path], tmp_path: Path,
) -> None:
    formula = tmp_path / '=HYPERLINK("evil.example","x").jpg'
    shutil.copyfile(sample_images[0], formula)
    job_id, ids = classified(fracture_env, [formula, sample_images[1], sample_images[2]])
    client.put(review_url(job_id, ids[0]), json={"label": "not fractured"})
    client.put(review_url(job_id, ids[2]), json={"label": "fractured"})

    got = client.get(f"/api/jobs/{job_id}/reviews.csv")
    assert got.status_code == 200 and got.mimetype == "text/csv"
    assert "reviews.csv" in got.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert list(rows[0]) == ["path", "prediction", "probability", "reviewed_label", "correct", "reviewer",
                             "reviewed_at"]
    assert [r["path"] for r in rows] == ["'" + formula.name, sample_images[2].name]  # unreviewed image left out
    assert [(r["prediction"], r["reviewed_label"], r["correct"]) for r in rows] == [
        ("fractured", "not fractured", "false"), ("fractured", "fractured", "true")]
    assert all(r["probability"] == "0.750000" and r["reviewer"] == "tester" for r in rows)
    assert all(datetime.fromisoformat(r["reviewed_at"]).tzinfo is not None for r in rows)


def _near_a_held_image(path: Path, held: dict[str, list[str]]) -> bool:
    return md5_file(path) in held or near_any(dihedral_hashes(decode(path, 64)), held)


def test_reviewed_images_join_a_training_dataset_once_never_a_locked_ones_and_the_next_training_counts_them(
    fracture_env: dict[str, str], cfg: Settings, admin: FlaskClient, roots: Path, tmp_path: Path,
) -> None:
    site = ready_dataset(admin, cfg, roots / "site", "site")
    held = ready_dataset(admin, cfg, roots / "held", "held", role="evaluation")
    held_hashes = json.loads((cfg.storage_dir / "datasets" / str(held) / "hashes.json").read_text())
    held_counts = admin.get(f"/api/datasets/{held}").get_json()["counts"]
    in_site = sorted((roots / "site" / "train" / "not fractured").iterdir())[0]
    in_held = sorted((roots / "held" / "fractured").iterdir())[0]
    turned = tmp_path / "turned.png"  # a quarter-turned PNG of a held image: other bytes, the same picture
    PILImage.open(sorted((roots / "held" / "not fractured").iterdir())[0]).convert("L").rotate(90, expand=True).save(
        turned)
    distinct = {md5_file(p): p for p in sorted((roots / "pool").rglob("*.*"), reverse=True)}  # many are copies
    fresh = [p for p in sorted(distinct.values()) if not _near_a_held_image(p, held_hashes)][:4]
    assert len(fresh) == 4, "the pool should hold images unlike the held ones"

    job_id, ids = classified(fracture_env, [in_site, in_held, turned, *fresh])
    labels = ["fractured", "fractured", "fractured", "fractured", "not fractured", "not fractured"]
    for image_id, label in zip(ids[:6], labels, strict=True):  # the last fresh image stays unreviewed
        assert admin.put(review_url(job_id, image_id), json={"label": label}).status_code == 200

    # Only a ready training dataset takes them.
    for bad in ({"dataset_id": held}, {"dataset_id": 999}, {}):
        refused = admin.post(f"/api/jobs/{job_id}/add-to-dataset", json=bad)
        assert refused.status_code == 400, refused.get_json()
    assert "locked evaluation dataset" in admin.post(f"/api/jobs/{job_id}/add-to-dataset",
                                                     json={"dataset_id": held}).get_json()["error"]

    report = admin.post(f"/api/jobs/{job_id}/add-to-dataset", json={"dataset_id": site}).get_json()
    assert report["counts"] == {"added": 3, "already": 1, "locked": 2, "skipped": 0, "not_reviewed": 1}
    assert [a["image_id"] for a in report["added"]] == ids[3:6]
    assert [a["image_id"] for a in report["already_in_dataset"]] == [ids[0]]
    assert {(x["image_id"], x["evaluation_dataset"]) for x in report["kept_out_locked"]} == {
        (ids[1], "held"), (ids[2], "held")}  # the same bytes, and the turned copy by its perceptual hash

    # Adding again adds nothing: the three are in the dataset now.
    again = admin.post(f"/api/jobs/{job_id}/add-to-dataset", json={"dataset_id": site}).get_json()
    assert again["counts"] == {"added": 0, "already": 4, "locked": 2, "skipped": 0, "not_reviewed": 1}
    # The page's form says the same and goes back to the job.
    form = admin.post(f"/jobs/{job_id}/add-to-dataset", data={"dataset_id": str(site)})
    assert form.status_code == 302 and form.headers["Location"].endswith(f"/jobs/{job_id}")
    # The dataset says how many it holds besides its own files; the locked one holds none.
    assert admin.get(f"/api/datasets/{site}").get_json()["reviewed_additions"] == 3
    assert admin.get(f"/api/datasets/{held}").get_json()["reviewed_additions"] == 0
    assert '<p id="reviewed-additions">Plus <strong>3</strong> reviewed images' in admin.get(
        f"/datasets/{site}").get_data(as_text=True)

    with session_scope(cfg.database_url) as s:
        added = s.scalars(select(DatasetAddition).order_by(DatasetAddition.id)).all()
        assert [(a.dataset_id, a.source_image_id, a.label, a.added_by is not None) for a in added] == [
            (site, ids[3], "fractured", True), (site, ids[4], "not fractured", True),
            (site, ids[5], "not fractured", True)]
        copies = {a.md5: cfg.storage_dir / a.storage_key for a in added}
    assert all(md5_file(path) == md5 for md5, path in copies.items())
    assert copies.keys() == {md5_file(p) for p in fresh[:3]}

    # The next training on `site` trains on them, and says how many (and how many changed the model's call).
    run_id = admin.post("/api/trainings", json={"dataset_ids": [site], **TINY}).get_json()["id"]
    assert run_training(cfg, run_id) is not None
    run_dir = cfg.storage_dir / "runs" / str(run_id)
    summary = json.loads((run_dir / "model_card.json").read_text())
    assert summary["corrections"] == {"offered": 3, "used": 3, "relabelled": 2, "left_out": 0}
    assert summary["audit"]["files"] == 20 + 3
    card = (run_dir / "model_card.md").read_text()
    assert "Reviewed corrections trained on: 3 of the 3 reviewed images" in card and "(2 with a label other" in card
    with session_scope(cfg.database_url) as s:
        version = s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())).first()
        assert version is not None
        assert version.metrics["corrections"] == 3 and version.metrics["corrections_relabelled"] == 2
        # The fingerprint names the data trained on: the dataset's files and the three additions.
        own, _ = scan(roots / "site")
        labelled = [Sample(copies[a.md5], "train", a.label, a.md5) for a in added]
        assert version.data_fingerprint == fingerprint(own + labelled)
        assert version.data_fingerprint != s.get_one(Dataset, site).fingerprint
    models = admin.get("/models")
    assert models.status_code == 200 and b"corrections: 3" in models.data
    # Trained on, never tested on: the test split holds none of them; no evaluation dataset ever holds them.
    assert not copies.keys() & {md5_file(Path(p)) for p, _ in summary["splits"]["test"]}
    spec = json.loads((run_dir / "data-spec.json").read_text())
    assert [len(d["additions"]) for d in spec] == [3]
    assert not copies.keys() & set(json.loads((cfg.storage_dir / "datasets" / str(held) / "hashes.json").read_text()))
    assert admin.get(f"/api/datasets/{held}").get_json()["counts"] == held_counts


def test_the_job_page_partial_offers_ready_training_datasets_to_admins_only(
    fracture_env: dict[str, str], cfg: Settings, admin: FlaskClient, roots: Path, sample_images: list[Path],
) -> None:
    site = ready_dataset(admin, cfg, roots / "site", "site")
    ready_dataset(admin, cfg, roots / "held", "held", role="evaluation")
    job_id, ids = classified(fracture_env, sample_images[:2])
    admin.put(review_url(job_id, ids[0]), json={"label": "not fractured"})
    # The job page's view gives the partial its data (no template runs a query).
    html = admin.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert '<strong><span id="progress-reviewed">1</span> / 2</strong> reviewed' in html
    assert '<span id="progress-correct">0</span> correct · <span id="progress-wrong">1</span> wrong' in html
    assert f'<option value="{site}">site</option>' in html and ">held<" not in html  # training datasets only
    assert f'action="/jobs/{job_id}/add-to-dataset"' in html and 'name="csrf_token"' in html
    assert f"/api/jobs/{job_id}/reviews.csv" in html
    reader = add_user(fracture_env, "reader")
    with session_scope(cfg.database_url) as s:
        job = s.get_one(Job, job_id)
        job.owner_id = s.scalars(select(User).where(User.username == reader["username"])).one().id
    html = admin.application.test_client().get(f"/jobs/{job_id}", headers=bearer(reader["token"])).get_data(
        as_text=True)
    assert "1</span> / 2" in html and "add-reviewed-form" not in html
