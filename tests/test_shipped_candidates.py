"""A fresh installation registers the shipped release as active and the other shipped models as candidates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from installation import REPO_ROOT
from sqlalchemy import select

from fracture.config import get_settings
from fracture.db import dispose_engines, session_scope
from fracture.migrate import upgrade
from fracture.ml.checkpoint import read_payload
from fracture.models import ModelStatus, ModelVersion
from fracture.registry import SEED_VERSION, SHIPPED_CANDIDATES, ensure_seed_model

RELEASE = REPO_ROOT / "fracture" / "release"


def _versions(database_url: str) -> dict[str, tuple[str, dict[str, str], str | None]]:
    with session_scope(database_url) as session:
        return {v.name: (v.status, dict(v.plots or {}), v.notes) for v in session.scalars(select(ModelVersion))}


def test_a_fresh_install_registers_the_shipped_candidates_beside_the_active_release(tmp_path: Path) -> None:
    assert [name for _, name in SHIPPED_CANDIDATES] == ["two-site-1", "robust-1", "robust-2", "two-views-1",
                                                          "robust-3", "two-site-2", "two-site-3", "two-site-4",
                                                          "two-site-5", "two-site-6", "two-site-7", "two-site-8",
                                                          "two-site-9", "site-1", "two-site-11", "two-site-12"]
    for folder, _ in SHIPPED_CANDIDATES:
        shipped = RELEASE / folder / "model.pt"
        assert shipped.is_file() and shipped.stat().st_size <= 25 * 2**20
        assert (RELEASE / folder / "model_card.md").is_file()
    settings = dataclasses.replace(get_settings({"FRACTURE_HOME": str(tmp_path / "home")}),
                                   seed_model=RELEASE / "model.pt")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        active = ensure_seed_model(session, settings)
        assert active is not None and active.name == "release-1"
    versions = _versions(settings.database_url)
    assert versions["release-1"][0] == ModelStatus.ACTIVE
    for folder, name in SHIPPED_CANDIDATES:
        status, plots, notes = versions[name]
        assert status == ModelStatus.CANDIDATE and f"{folder}/model_card.md" in (notes or "")
        assert plots and all((settings.storage_dir / key).is_file() for key in plots.values())
        with session_scope(settings.database_url) as session:
            candidate = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one()
            assert candidate.metrics == read_payload(RELEASE / folder / "model.pt")["metrics"]
    # The robust candidate carries its robustness audit; the page shows it.
    assert "robustness" in read_payload(RELEASE / "robust" / "model.pt")["metrics"]
    # robust-2 learnt from the second site's fracture boxes where to look.
    assert read_payload(RELEASE / "robust-boxes" / "model.pt")["box_weight"] == 0.3
    # robust-3 trims the frame and equalises the grey levels, as the worker serves it.
    assert read_payload(RELEASE / "robust-framing" / "model.pt")["preprocess"]["framing"] == "trim"
    # two-site-2 does the same on both sources, its locked part left out.
    two_site_2 = read_payload(RELEASE / "two-site-trim" / "model.pt")
    assert two_site_2["preprocess"]["framing"] == "trim" and two_site_2["preprocess"]["intensity"] == "equalize"
    # two-site-3 equalises the decoded image, on two-site-2's split, its threshold chosen on changed images too.
    two_site_3 = read_payload(RELEASE / "two-site-eqf" / "model.pt")
    assert two_site_3["preprocess"]["intensity"] == "equalize-full"
    assert two_site_3["metrics"]["test"]["n"] == two_site_2["metrics"]["test"]["n"]
    assert two_site_3["metrics"]["threshold_on"].startswith("val and the images of an acquisition-changed copy")
    # two-site-4: the same split and preprocessing, its map 8x8 (output stride 16), taught by the boxes.
    two_site_4 = read_payload(RELEASE / "two-site-os16" / "model.pt")
    assert two_site_4["model_args"]["output_stride"] == 16 and two_site_4["box_weight"] == 1.0
    assert two_site_4["preprocess"] == two_site_3["preprocess"]
    assert two_site_4["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # two-site-5: the same at stride 16 without the boxes.
    two_site_5 = read_payload(RELEASE / "two-site-os16-plain" / "model.pt")
    assert two_site_5["model_args"]["output_stride"] == 16 and two_site_5["box_weight"] is None
    assert two_site_5["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # two-site-6: two-site-5 taught by the boxes, its epochs kept on val's ROC-AUC and pointing game together.
    two_site_6 = read_payload(RELEASE / "two-site-pointing" / "model.pt")
    assert two_site_6["model_args"]["output_stride"] == 16 and two_site_6["box_weight"] == 0.5
    assert "pointing game" in two_site_6["metrics"]["selected_on"] and two_site_6["history"]["val_pointing"]
    assert two_site_6["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # two-site-7: the same teaching at output stride 8 (a 16x16 map), the box loss on the cells a peak would point.
    two_site_7 = read_payload(RELEASE / "two-site-os8" / "model.pt")
    assert two_site_7["model_args"]["output_stride"] == 8 and two_site_7["box_cells"] == "centres"
    assert "pointing game" in two_site_7["metrics"]["selected_on"]
    assert two_site_7["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # two-site-8: two-site-7 fine-tuned at 160 px, the same split (hashed at one size whatever the input's).
    two_site_8 = read_payload(RELEASE / "two-site-160" / "model.pt")
    assert two_site_8["preprocess"]["image_size"] == 160 and two_site_8["model_args"]["output_stride"] == 8
    assert two_site_8["preprocess"]["intensity"] == two_site_7["preprocess"]["intensity"]
    assert two_site_8["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # two-site-9: two-site-8 fine-tuned at 192 px, the same split again.
    two_site_9 = read_payload(RELEASE / "two-site-192" / "model.pt")
    assert two_site_9["preprocess"]["image_size"] == 192 and two_site_9["model_args"]["output_stride"] == 8
    assert two_site_9["preprocess"]["framing"] == two_site_8["preprocess"]["framing"] == "trim"
    assert two_site_9["metrics"]["test"]["n"] == two_site_3["metrics"]["test"]["n"]
    # site-1: two-site-8's network fine-tuned on the second site's training part alone: its own split, smaller.
    site_1 = read_payload(RELEASE / "site-160" / "model.pt")
    assert site_1["model_args"] == two_site_8["model_args"] and site_1["preprocess"]["image_size"] == 160
    assert site_1["metrics"]["test"]["n"] < two_site_8["metrics"]["test"]["n"]
    # two-site-11: site-1 fine-tuned on both sources, on two-site-8's split again.
    two_site_11 = read_payload(RELEASE / "two-site-11" / "model.pt")
    assert two_site_11["model_args"] == site_1["model_args"]
    assert two_site_11["metrics"]["test"]["n"] == two_site_8["metrics"]["test"]["n"]
    # two-site-12: 0.85 of two-site-11's weights and 0.15 of site-1's, the one it was fine-tuned from (--interpolate),
    # with its own threshold and detector, on the same split.
    two_site_12 = read_payload(RELEASE / "two-site-12" / "model.pt")
    assert two_site_12["interpolate"] == 0.85 and two_site_12["init"].endswith("site-160/model.pt")
    for key, value in two_site_12["state_dict"].items():
        blend = (0.85 * two_site_11["state_dict"][key] + 0.15 * site_1["state_dict"][key]
                 if value.is_floating_point() else two_site_11["state_dict"][key])
        assert torch.allclose(value, blend, atol=1e-6), key
    assert two_site_12["threshold"] != two_site_11["threshold"]
    assert two_site_12["metrics"]["test"]["n"] == two_site_11["metrics"]["test"]["n"]
    with session_scope(settings.database_url) as session:
        ensure_seed_model(session, settings)  # once only: nothing new on the next start
    assert sorted(_versions(settings.database_url)) == sorted([SEED_VERSION, *(name for _, name in SHIPPED_CANDIDATES)])
    dispose_engines()


def test_an_installation_seeded_from_elsewhere_registers_only_its_model(tmp_path: Path,
                                                                          tiny_checkpoint: Path) -> None:
    settings = dataclasses.replace(get_settings({"FRACTURE_HOME": str(tmp_path / "home")}),
                                   seed_model=tiny_checkpoint)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        ensure_seed_model(session, settings)
    assert list(_versions(settings.database_url)) == ["release-1"]
    dispose_engines()
