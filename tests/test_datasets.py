"""Datasets: registering server folders (only under DATASET_ROOTS), zip uploads, validation, split, gate, pages.

Validation and split are the trainer's task bodies, called here in process on small real samples of both shared
datasets; the queue's real path (redis + a trainer worker) and the CLI are in test_datasets_live.py.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_files import make_zip
from flask.testing import FlaskClient
from installation import add_user, materialize, materialize_both
from web_client import make_client
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import stream_encode_multipart

from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Dataset
from fracture.storage import Storage
from trainer.dataset_scan import md5_file
from trainer.dataset_validation import inspect, validate_dataset
from trainer.evaluation_holdout import split_dataset, split_members


@pytest.fixture(scope="module")
def roots(dataset_root: Path, site_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATASET_ROOTS folder with real samples: `multi` (train/val/test, 6 per class) and `site` (train, 10)."""
    return materialize_both(dataset_root, site_root, tmp_path_factory.mktemp("roots"))


@pytest.fixture
def env(fracture_env: dict[str, str], roots: Path) -> dict[str, str]:
    return {**fracture_env, "DATASET_ROOTS": str(roots)}


@pytest.fixture
def cfg(env: dict[str, str]) -> Iterator[Settings]:
    yield get_settings(env)
    dispose_engines()


@pytest.fixture
def admin(cfg: Settings) -> FlaskClient:
    return make_client(cfg)


def register(client: FlaskClient, path: Path | str, **extra: object) -> dict[str, Any]:
    response = client.post("/api/datasets", json={"path": str(path), **extra})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "validating"
    return body


def validated(client: FlaskClient, cfg: Settings, dataset_id: int) -> dict[str, Any]:
    """Run the trainer's validation in process, then read the dataset back through the API."""
    validate_dataset(cfg, dataset_id)
    body = client.get(f"/api/datasets/{dataset_id}").get_json()
    assert body["status"] == "ready", body
    return body


def expected_counts(root: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        split, label = f.relative_to(root).parts[:2]
        out.setdefault(split, {}).setdefault(label, 0)
        out[split][label] += 1
    return out


def upload(client: FlaskClient, data: bytes, name: str = "data.zip", **form: str) -> tuple[int, dict[str, Any]]:
    fields = MultiDict([("file", FileStorage(io.BytesIO(data), filename=name)), *form.items()])
    # In memory: werkzeug's own encoder leaks a temporary file on large bodies.
    body, _length, boundary = stream_encode_multipart(fields, use_tempfile=False)
    response = client.post("/api/datasets", data=body.getvalue(),
                           content_type=f"multipart/form-data; boundary={boundary}")
    return response.status_code, response.get_json()


def zip_of(folder: Path, top: str = "") -> bytes:
    """A zip of `folder`'s files, under `top/` when given (as compressing a folder does)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(f, f"{top}{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


# ---------------------------------------------------------------- server folders


def test_folders_under_the_roots_are_validated_with_counts_leakage_shared_duplicates_and_thumbnails(
    admin: FlaskClient, cfg: Settings, roots: Path,
) -> None:
    multi = validated(admin, cfg, int(register(admin, roots / "multi", name="multi")["id"]))
    assert multi["layout"] == "splits" and multi["role"] == "training"
    assert multi["counts"] == expected_counts(roots / "multi")
    audit = multi["audit"]
    assert isinstance(audit, dict) and audit["files"] == 36
    # The multiregion splits share byte-identical files; where this sample holds such a pair, it is reported.
    md5_splits: dict[str, set[str]] = {}
    for f in (roots / "multi").rglob("*.*"):
        md5_splits.setdefault(md5_file(f), set()).add(f.relative_to(roots / "multi").parts[0])
    if any(len(s) > 1 for s in md5_splits.values()):
        assert audit["leakage"] is True and sum(audit["exact_duplicates_across_splits"].values()) > 0
    thumbs = multi["thumbnails"]
    assert isinstance(thumbs, dict) and set(thumbs) == {"fractured", "not fractured"}
    for urls in thumbs.values():
        assert 1 <= len(urls) <= 4
        served = admin.get(urls[0])
        assert served.status_code == 200 and served.mimetype == "image/png"
        assert served.data[:8] == b"\x89PNG\r\n\x1a\n"
        served.close()
    assert admin.get(f"/datasets/{multi['id']}/thumbnails/0/99").status_code == 404

    site = validated(admin, cfg, int(register(admin, roots / "site", role="evaluation")["id"]))
    assert site["name"] == "site" and site["role"] == "evaluation"
    assert site["counts"] == {"train": {"fractured": 10, "not fractured": 10}}
    shared = site["audit"]["shared_duplicates"]
    assert [s["name"] for s in shared] == ["multi"] and shared[0]["exact"] == 0

    # The same folder registered again shares every image with the first.
    again = validated(admin, cfg, int(register(admin, roots / "site", name="site again")["id"]))
    by_name = {s["name"]: s for s in again["audit"]["shared_duplicates"]}
    assert by_name["site"]["exact"] == 20

    listed = admin.get("/api/datasets").get_json()["datasets"]
    assert [d["name"] for d in listed] == ["multi", "site", "site again"]
    assert all(d["root"] for d in listed)  # admins see the server path


def test_paths_outside_the_roots_are_refused(admin: FlaskClient, cfg: Settings, roots: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "fractured"
    outside.mkdir(parents=True)
    (roots / "escape").symlink_to(outside.parent, target_is_directory=True)
    try:
        for path in (outside.parent, "/etc", f"{roots}/../", f"{roots}/multi/../..", roots / "escape"):
            response = admin.post("/api/datasets", json={"path": str(path)})
            assert response.status_code == 400, path
            assert "is not under an allowed dataset root" in response.get_json()["error"]
        missing = admin.post("/api/datasets", json={"path": str(roots / "nope")})
        assert missing.status_code == 400 and "no such folder" in missing.get_json()["error"]
        assert admin.post("/api/datasets", json={"name": "x"}).status_code == 400
    finally:
        (roots / "escape").unlink()
    with session_scope(cfg.database_url) as session:
        assert session.query(Dataset).count() == 0


def test_only_admins_register_datasets(env: dict[str, str], cfg: Settings, roots: Path) -> None:
    add_user(env, "alice")
    alice = make_client(cfg, as_user="alice")
    response = alice.post("/api/datasets", json={"path": str(roots / "site")})
    assert response.status_code == 403 and "administrator" in response.get_json()["error"]
    assert alice.get("/api/datasets").status_code == 200


# ---------------------------------------------------------------- zip uploads


def test_a_zip_upload_is_unpacked_into_storage_and_validated(admin: FlaskClient, cfg: Settings, roots: Path) -> None:
    # Flat layout (ROOT/<class>/...) inside the folder the zip was made of.
    status, body = upload(admin, zip_of(roots / "site" / "train", top="my-site/"), name="my-site.zip")
    assert status == 201, body
    assert body["name"] == "my-site" and body["source"] == "upload"
    root = Path(str(body["root"]))
    assert root.is_relative_to(cfg.storage_dir) and (root / "fractured").is_dir()
    ready = validated(admin, cfg, int(body["id"]))
    assert ready["layout"] == "flat" and ready["counts"] == {"train": {"fractured": 10, "not fractured": 10}}

    status, body = upload(admin, zip_of(roots / "multi"), name="multi.zip", role="evaluation")
    assert status == 201 and body["role"] == "evaluation"
    ready = validated(admin, cfg, int(body["id"]))
    assert ready["layout"] == "splits" and ready["counts"] == expected_counts(roots / "multi")


def test_a_zips_fracture_boxes_are_kept_beside_its_images_and_bad_ones_refused(
    admin: FlaskClient, cfg: Settings, jpeg: bytes,
) -> None:
    """A boxes.csv beside the class folders (under the zip's top folder too) is kept at the dataset's root, where a
    training with a box weight finds it; other stray files are not; one that is not UTF-8 text refuses the zip."""
    good = [("site/fractured/a.jpg", jpeg), ("site/not fractured/b.jpg", jpeg)]
    boxes = b"filename,x0,y0,x1,y1\na.jpg,0.1,0.2,0.3,0.4\n"
    status, body = upload(admin, make_zip([*good, ("site/boxes.csv", boxes), ("site/notes.txt", b"hello")]))
    assert status == 201, body
    root = Path(str(body["root"]))
    assert (root / "boxes.csv").read_bytes() == boxes and not (root / "notes.txt").exists()
    status, body = upload(admin, make_zip([*good, ("site/boxes.csv", b"\xff\xfe\x00binary")]), name="other.zip")
    assert status == 400 and "fracture boxes are a CSV in UTF-8 text" in body["error"], body
    with session_scope(cfg.database_url) as session:
        assert session.query(Dataset).count() == 1


def test_a_zip_with_a_bad_layout_gets_a_clear_error_and_nothing_is_stored(
    admin: FlaskClient, cfg: Settings, roots: Path, jpeg: bytes,
) -> None:
    bad = {
        "loose.zip": make_zip([("a.jpg", jpeg), ("fractured/b.jpg", jpeg)]),
        "three.zip": make_zip([("a/x.jpg", jpeg), ("b/x.jpg", jpeg), ("c/x.jpg", jpeg)]),
        "one.zip": make_zip([("fractured/x.jpg", jpeg), ("fractured/y.jpg", jpeg)]),
        "mixed.zip": make_zip([("train/fractured/x.jpg", jpeg), ("fractured/y.jpg", jpeg)]),
        "nosplitclass.zip": make_zip([("train/x.jpg", jpeg), ("val/y.jpg", jpeg)]),
        "empty.zip": make_zip([("notes.txt", b"hello")]),
    }
    for name, data in bad.items():
        status, body = upload(admin, data, name=name)
        assert status == 400, (name, body)
        assert body["error"].startswith("The zip was refused: ")
        assert "layout is not supported" in body["error"] or "holds no images" in body["error"], body
    assert "one folder per class" in upload(admin, bad["loose.zip"])[1]["error"]
    status, body = upload(admin, b"not a zip at all", name="x.zip")
    assert status == 400 and "damaged or unreadable zip archive" in body["error"]
    with session_scope(cfg.database_url) as session:
        assert session.query(Dataset).count() == 0
    files = cfg.storage_dir / "dataset-files"
    assert not files.exists() or not any(files.iterdir())


def test_a_zip_with_unsafe_members_is_refused_as_image_uploads_are(
    admin: FlaskClient, cfg: Settings, jpeg: bytes,
) -> None:
    good = [("fractured/a.jpg", jpeg), ("not fractured/b.jpg", jpeg)]
    link = zipfile.ZipInfo("fractured/link.jpg")
    link.external_attr = (0o120777 << 16)
    cases = {
        "../evil.jpg": "path leaves the archive",
        "/abs/fractured/x.jpg": "absolute path",
        "fractured/../../x.jpg": "path leaves the archive",
    }
    for member, reason in cases.items():
        status, body = upload(admin, make_zip([*good, (member, jpeg)]))
        assert status == 400 and reason in body["error"], (member, body)
    status, body = upload(admin, make_zip([*good, (link, b"/etc/passwd")]))
    assert status == 400 and "symbolic link" in body["error"]
    status, body = upload(admin, make_zip([*good, ("fractured/c.jpg", b"MZ not an image")]))
    assert status == 400 and "not an image" in body["error"]
    status, body = upload(admin, make_zip([*good, ("fractured/inner.jpg", make_zip(good))]))
    assert status == 400 and "nested archives" in body["error"]
    with session_scope(cfg.database_url) as session:
        assert session.query(Dataset).count() == 0
    files = cfg.storage_dir / "dataset-files"
    assert not files.exists() or not any(files.iterdir())


def test_zip_caps_answer_413(cfg: Settings, env: dict[str, str], jpeg: bytes) -> None:
    small = make_client(get_settings({**env, "MAX_ZIP_MEMBERS": "3"}))
    status, body = upload(small, make_zip([(f"fractured/{i}.jpg", jpeg) for i in range(4)]))
    assert status == 413 and "more than the limit of 3" in body["error"]


# ---------------------------------------------------------------- split and gate


def test_split_makes_a_grouped_stratified_seeded_training_part_and_a_locked_evaluation_part(
    admin: FlaskClient, cfg: Settings, roots: Path,
) -> None:
    parent = validated(admin, cfg, int(register(admin, roots / "multi", name="multi")["id"]))
    response = admin.post(f"/api/datasets/{parent['id']}/split", json={"fraction": 0.25, "seed": 3})
    assert response.status_code == 202, response.get_json()
    parts = response.get_json()
    training, evaluation = parts["training"], parts["evaluation"]
    assert training["name"] == "multi training part" and training["role"] == "training"
    assert evaluation["name"] == "multi evaluation part" and evaluation["role"] == "evaluation"
    split_dataset(cfg, int(parent["id"]), training["id"], evaluation["id"], 0.25, 3)
    training = admin.get(f"/api/datasets/{training['id']}").get_json()
    evaluation = admin.get(f"/api/datasets/{evaluation['id']}").get_json()
    assert training["status"] == evaluation["status"] == "ready", (training, evaluation)
    assert evaluation["split"] == {"parent_id": parent["id"], "fraction": 0.25, "seed": 3}

    with session_scope(cfg.database_url) as session:
        parts = session.query(Dataset).filter(Dataset.parent_id.isnot(None))
        members = {d.name: set(d.members["paths"]) for d in parts}
    train_paths, eval_paths = members["multi training part"], members["multi evaluation part"]
    assert not train_paths & eval_paths and len(train_paths | eval_paths) == 36
    assert 0.1 <= len(eval_paths) / 36 <= 0.45  # one of 4 folds, grouped: near the fraction
    for paths in (train_paths, eval_paths):  # both classes on both sides
        assert {p.split("/")[1] for p in paths} == {"fractured", "not fractured"}
    # No near-duplicate group (nor byte-identical copy) on both sides.
    found = inspect(roots / "multi", None)
    group = {s.path.relative_to(roots / "multi").as_posix(): found.report.group_of[s.md5] for s in found.samples}
    assert not {group[p] for p in train_paths} & {group[p] for p in eval_paths}
    # The evaluation part shares no image with its sibling; the validation compares them.
    shared = {s["name"]: s for s in evaluation["audit"]["shared_duplicates"]}
    assert shared["multi training part"]["exact"] == 0 and shared["multi training part"]["near"] == 0
    # Same seed, same split.
    assert split_members(found, roots / "multi", 0.25, 3) == split_members(found, roots / "multi", 0.25, 3)
    assert sorted(split_members(found, roots / "multi", 0.25, 3)[1]) == sorted(eval_paths)

    again = admin.post(f"/api/datasets/{parent['id']}/split", json={"fraction": 0.25})
    assert again.status_code == 409 and "already exists" in again.get_json()["error"]
    locked = admin.post(f"/api/datasets/{evaluation['id']}/split", json={})
    assert locked.status_code == 400 and "locked" in locked.get_json()["error"]
    for fraction in (0.9, "x", 0):
        bad = admin.post(f"/api/datasets/{parent['id']}/split", json={"fraction": fraction})
        assert bad.status_code == 400 and "fraction" in bad.get_json()["error"]


def test_the_site_folder_splits_with_both_classes_on_both_sides(
    admin: FlaskClient, cfg: Settings, roots: Path,
) -> None:
    parent = validated(admin, cfg, int(register(admin, roots / "site")["id"]))
    parts = admin.post(f"/api/datasets/{parent['id']}/split", json={}).get_json()
    split_dataset(cfg, int(parent["id"]), parts["training"]["id"], parts["evaluation"]["id"])
    evaluation = admin.get(f"/api/datasets/{parts['evaluation']['id']}").get_json()
    training = admin.get(f"/api/datasets/{parts['training']['id']}").get_json()
    assert evaluation["counts"] == {"train": {"fractured": 2, "not fractured": 2}}
    assert training["counts"] == {"train": {"fractured": 8, "not fractured": 8}}


def test_only_evaluation_datasets_gate_promotion(admin: FlaskClient, cfg: Settings, roots: Path) -> None:
    training = register(admin, roots / "multi")
    evaluation = register(admin, roots / "site", role="evaluation")
    refused = admin.post(f"/api/datasets/{training['id']}/gate", json={"gate": True})
    assert refused.status_code == 400 and "only an evaluation" in refused.get_json()["error"]
    gated = admin.post(f"/api/datasets/{evaluation['id']}/gate", json={"gate": True})
    assert gated.status_code == 200 and gated.get_json()["gate"] is True
    assert admin.post(f"/api/datasets/{evaluation['id']}/gate", json={"gate": "yes"}).status_code == 400
    assert admin.post("/api/datasets/999/gate", json={"gate": True}).status_code == 400


def test_an_unreadable_dataset_is_invalid_with_a_readable_reason(
    admin: FlaskClient, cfg: Settings, roots: Path,
) -> None:
    one_class = roots / "one-class"
    (one_class / "fractured").mkdir(parents=True, exist_ok=True)
    real = next((roots / "site" / "train" / "fractured").iterdir())
    (one_class / "fractured" / "a.png").write_bytes(real.read_bytes())
    body = register(admin, one_class)
    validate_dataset(cfg, int(body["id"]))
    invalid = admin.get(f"/api/datasets/{body['id']}").get_json()
    assert invalid["status"] == "invalid"
    assert invalid["error"].startswith("The dataset could not be validated: expected two class folders")


# ---------------------------------------------------------------- pages


def test_pages_list_show_and_register(admin: FlaskClient, cfg: Settings, roots: Path) -> None:
    training = admin.get("/training").get_data(as_text=True)
    assert 'id="no-dataset"' in training and 'href="/datasets"' in training
    page = admin.get("/datasets").get_data(as_text=True)
    assert 'id="register-form"' in page and 'id="upload-dataset-form"' in page and str(roots) in page
    # The form posts a folder and lands on the dataset's page.
    response = admin.post("/datasets", data={"path": str(roots / "multi"), "name": "multi", "role": "training"})
    assert response.status_code == 302
    dataset_id = int(response.headers["Location"].rsplit("/", 1)[1])
    validate_dataset(cfg, dataset_id)
    shown = admin.get(f"/datasets/{dataset_id}").get_data(as_text=True)
    assert 'id="counts"' in shown and 'id="leakage"' in shown and 'id="split-form"' in shown
    assert f"/datasets/{dataset_id}/thumbnails/0/0" in shown
    assert 'id="no-dataset"' not in admin.get("/training").get_data(as_text=True)
    refused = admin.post("/datasets", data={"path": "/etc"}, follow_redirects=True).get_data(as_text=True)
    assert "is not under an allowed dataset root" in refused
    assert admin.get("/datasets/999").status_code == 404


def test_fracture_up_registers_FRACTURE_DATASET_once(
    env: dict[str, str], roots: Path, site_root: Path, tmp_path: Path
) -> None:
    from launcher.supervisor import register_dataset_dir

    outside = tmp_path / "operator"
    materialize(site_root, outside, per_class=2)
    settings = get_settings({**env, "FRACTURE_DATASET": str(outside)})
    lines: list[str] = []
    first = register_dataset_dir(settings, lines.append)
    assert first is not None and "registered from FRACTURE_DATASET" in lines[0]
    assert register_dataset_dir(settings, lines.append) is None
    validate_dataset(settings, first)
    with session_scope(settings.database_url) as session:
        dataset = session.get(Dataset, first)
        assert dataset is not None and dataset.status == "ready" and dataset.root == str(outside.resolve())
    dispose_engines()
    assert os.path.isdir(Storage(settings.storage_dir).path(f"datasets/{first}/thumbs"))


def test_a_validating_dataset_page_follows_it_until_it_is_ready(admin: FlaskClient, cfg: Settings, roots: Path) -> None:
    """While validating, the page (and its parent's list of parts) polls the dataset's JSON through web/static/live.js,
    a script of /static (the CSP allows no inline one), and reloads when the status changes; once ready, nothing
    polls."""
    live = 'data-live-url="/api/datasets/{}"'
    parent = int(register(admin, roots / "site", name="site")["id"])
    page = admin.get(f"/datasets/{parent}").get_data(as_text=True)
    assert live.format(parent) in page and "data-live-watch='{\"status\": \"validating\"}'" in page
    assert '<script src="/static/live.js" defer></script>' in page and "<script>" not in page
    assert admin.get(live.format(parent).split('"')[1]).get_json()["status"] == "validating"

    validate_dataset(cfg, parent)
    assert "data-live-url" not in admin.get(f"/datasets/{parent}").get_data(as_text=True)
    parts = admin.post(f"/api/datasets/{parent}/split", json={}).get_json()
    ids = parts["training"]["id"], parts["evaluation"]["id"]
    page = admin.get(f"/datasets/{parent}").get_data(as_text=True)
    assert all(live.format(i) in page for i in ids)  # the parent's page follows its parts' validation
    split_dataset(cfg, parent, *ids)
    assert "data-live-url" not in admin.get(f"/datasets/{parent}").get_data(as_text=True)
