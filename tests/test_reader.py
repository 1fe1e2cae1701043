"""The job page as a reading list: thumbnails from the worker, filters and sorts, the summary, the viewer's order.

A job of real X-rays (and one broken file) is classified by the worker's own task body; every filter of the
results API and the page is checked against the rows computed by hand from the unfiltered results.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from installation import add_user, create_job
from PIL import Image as PILImage
from sqlalchemy import select
from web_client import make_client

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.models import Image
from worker.classify import _predictors, classify_chunk


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, sample_images: list[Path],
        tiny_checkpoint: Path) -> tuple[dict[str, str], str]:
    from installation import new_installation

    env = new_installation(tmp_path_factory.mktemp("reader") / "home", tiny_checkpoint)
    broken = tmp_path_factory.mktemp("broken") / "=cmd|broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    job_id = create_job(env, [*sample_images[:14], broken])
    settings = get_settings(env)
    with session_scope(settings.database_url) as session:
        ids = list(session.scalars(select(Image.id).where(Image.job_id == job_id)))
    _predictors.clear()  # a model cached under the same version id by an earlier test's installation
    outcome = classify_chunk(settings, job_id, ids)
    assert (outcome.classified, outcome.errors) == (14, 1)
    return env, job_id


def _rows(client, job_id: str, query: str = "") -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    response = client.get(f"/api/jobs/{job_id}/results{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"]  # type: ignore[no-any-return]


def test_the_worker_writes_one_thumbnail_per_image_at_its_aspect_ratio(
    job: tuple[dict[str, str], str], sample_images: list[Path],
) -> None:
    env, job_id = job
    client = make_client(get_settings(env))
    rows = _rows(client, job_id)
    assert len(rows) == 15
    for row, source in zip(rows[:14], sample_images[:14], strict=True):
        assert row["thumbnail_url"] == f"/api/jobs/{job_id}/images/{row['image_id']}/thumbnail.jpg"
        with client.get(row["thumbnail_url"]) as response:
            assert response.status_code == 200 and response.mimetype == "image/jpeg"
            thumb = PILImage.open(io.BytesIO(response.data))
        with PILImage.open(source) as original:
            w, h = original.size
        assert max(thumb.size) == min(160, max(w, h))
        assert thumb.size[0] / thumb.size[1] == pytest.approx(w / h, rel=0.05)
        with client.get(f"/api/jobs/{job_id}/images/{row['image_id']}/image.png") as full:
            assert full.status_code == 200 and PILImage.open(io.BytesIO(full.data)).size == (w, h)
    broken = rows[14]
    assert broken["thumbnail_url"] is None and broken["error"] and broken["prediction"] is None
    assert client.get(f"/api/jobs/{job_id}/images/{broken['image_id']}/image.png").status_code == 422


def test_filters_and_sorts_select_exactly_the_rows_they_name(job: tuple[dict[str, str], str]) -> None:
    env, job_id = job
    client = make_client(get_settings(env))
    rows = _rows(client, job_id)
    classified = [r for r in rows if r["probability"] is not None]
    threshold = client.get(f"/api/jobs/{job_id}/summary").get_json()["threshold"]
    # A margin that puts about half of the classified images in the "uncertain" band.
    distances = sorted(abs(r["probability"] - threshold) for r in classified)
    margin = (distances[6] + distances[7]) / 2
    client = make_client(get_settings({**env, "UNCERTAIN_MARGIN": str(margin)}))

    def paths(query: str) -> list[str]:
        return [r["path"] for r in _rows(client, job_id, query)]

    uncertain = [r["path"] for r in classified if abs(r["probability"] - threshold) <= margin]
    assert 0 < len(uncertain) < len(classified)
    assert paths("?uncertain=1") == uncertain
    for label in ("fractured", "not fractured"):
        assert paths(f"?prediction={label}") == [r["path"] for r in rows if r["prediction"] == label]
    assert paths("?error=true") == [rows[14]["path"]]
    assert paths("?error=false") == [r["path"] for r in rows[:14]]
    by_probability = sorted(classified, key=lambda r: (-r["probability"], r["seq"]))
    assert paths("?sort=-probability") == [r["path"] for r in by_probability] + [rows[14]["path"]]
    assert paths("?sort=path") == sorted(r["path"] for r in rows)
    body = client.get(f"/api/jobs/{job_id}/results?uncertain=1&sort=probability&limit=2&offset=1").get_json()
    assert body["matching"] == len(uncertain)
    assert [r["path"] for r in body["results"]] == [
        r["path"] for r in sorted((r for r in classified if r["path"] in uncertain),
                                  key=lambda r: (r["probability"], r["seq"]))][1:3]
    for bad in ("?sort=size", "?prediction=maybe", "?review=perhaps", "?uncertain=sometimes"):
        response = client.get(f"/api/jobs/{job_id}/results{bad}")
        assert response.status_code == 400 and "must be" in response.get_json()["error"]

    # The page shows the same rows, says how many match, and keeps the filters on its pager links.
    html = client.get(f"/jobs/{job_id}?uncertain=1&sort=probability").get_data(as_text=True)
    assert f"({len(uncertain)} of 15 match)" in html
    listed = re.findall(r'<a class="open" href="[^"]*">([^<]*)</a>', html)
    assert sorted(listed) == sorted(uncertain)
    assert 'loading="lazy"' in html


def test_the_summary_counts_and_histogram_agree_with_the_rows_and_reviews_count(
    job: tuple[dict[str, str], str],
) -> None:
    env, job_id = job
    client = make_client(get_settings(env))
    rows = _rows(client, job_id)
    summary = client.get(f"/api/jobs/{job_id}/summary").get_json()
    assert summary["fractured"] == sum(r["prediction"] == "fractured" for r in rows)
    assert summary["not_fractured"] == sum(r["prediction"] == "not fractured" for r in rows)
    assert summary["errors"] == 1 and summary["total"] == 15
    counts = summary["histogram"]["counts"]
    assert len(counts) == 20 and sum(counts) == 14
    for r in rows[:14]:
        k = min(int(r["probability"] * 20), 19)
        assert counts[k] >= 1

    # Reviews: one agreeing, one disagreeing; the counts, the filters and the rows follow.
    first, second = rows[0], rows[1]
    other = {"fractured": "not fractured", "not fractured": "fractured"}
    for row, label in ((first, first["prediction"]), (second, other[second["prediction"]])):
        put = client.put(f"/api/jobs/{job_id}/images/{row['image_id']}/review", json={"label": label})
        assert put.status_code == 200, put.get_data(as_text=True)
    summary = client.get(f"/api/jobs/{job_id}/summary").get_json()
    assert (summary["reviewed"], summary["reviewed_correct"], summary["reviewed_wrong"]) == (2, 1, 1)
    assert [r["path"] for r in _rows(client, job_id, "?review=wrong")] == [second["path"]]
    assert [r["path"] for r in _rows(client, job_id, "?review=correct")] == [first["path"]]
    assert len(_rows(client, job_id, "?review=unreviewed")) == 13
    review = _rows(client, job_id, "?review=wrong")[0]["review"]
    assert review["label"] == other[second["prediction"]] and review["correct"] is False
    assert review["reviewer"] == env["FRACTURE_TEST_USER"] and review["reviewed_at"]
    html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert '<strong id="reviewed-count">2</strong> of 14 reviewed' in html


def test_the_viewer_steps_through_the_readers_own_sorted_filtered_list(job: tuple[dict[str, str], str]) -> None:
    env, job_id = job
    client = make_client(get_settings(env))
    ordered = _rows(client, job_id, "?sort=-probability&error=false")
    ids = [r["image_id"] for r in ordered]
    middle = ids[5]
    html = client.get(f"/jobs/{job_id}/images/{middle}?sort=-probability&error=false").get_data(as_text=True)
    assert f"6 of {len(ids)}" in html
    assert f'href="/jobs/{job_id}/images/{ids[4]}?error=false&amp;sort=-probability"' in html
    assert f'data-next-url="/jobs/{job_id}/images/{ids[6]}?error=false&amp;sort=-probability"' in html
    assert f'data-heatmap-url="/api/jobs/{job_id}/images/{middle}/heatmap.png"' in html
    assert ordered[5]["path"] in html
    last = client.get(f"/jobs/{job_id}/images/{ids[-1]}?sort=-probability&error=false").get_data(as_text=True)
    assert 'data-next-url=""' in last and 'id="next"' not in last


def test_someone_elses_job_images_summary_and_viewer_are_not_found(job: tuple[dict[str, str], str]) -> None:
    env, job_id = job
    settings = get_settings(env)
    owner = make_client(settings)
    image_id = _rows(owner, job_id)[0]["image_id"]
    stranger = make_client(settings, token=add_user(env, "stranger")["token"])
    image = f"/api/jobs/{job_id}/images/{image_id}"
    for url in (f"{image}/thumbnail.jpg", f"{image}/image.png", f"/api/jobs/{job_id}/summary",
                f"/jobs/{job_id}/images/{image_id}"):
        assert stranger.get(url).status_code == 404, url
        with owner.get(url) as response:
            assert response.status_code == 200, url
    assert owner.get(f"/api/jobs/{job_id}/images/999999/thumbnail.jpg").status_code == 404
