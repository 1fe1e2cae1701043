"""`training.retrain` on its own queue, run by a real Celery training worker on real images."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import WorkerFactory
from installation import materialize

from fracture.config import get_settings
from fracture.db import session_scope
from fracture.models import ModelStatus, ModelVersion, TrainingRun


def test_retrain_task_trains_registers_and_applies_the_promotion_rule(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, dataset_root: Path,
    tmp_path: Path,
) -> None:
    data = materialize(dataset_root, tmp_path / "ds", per_class=12)
    env = dict(fracture_env, REDIS_URL=redis_url, FRACTURE_DATASET=str(data))
    settings = get_settings(env)
    with session_scope(settings.database_url) as s:
        active = s.query(ModelVersion).filter_by(status=ModelStatus.ACTIVE).one()
        # A dry run on 12 images per class is too little data to tell: the new version must stay a candidate.
        run = TrainingRun(params={"dry_run": True, "width": 8, "image_size": 64})
        s.add(run)
        s.flush()
        run_id, active_id = run.id, active.id

    from worker.celery_app import make_celery

    app = make_celery(settings)
    app.send_task("training.retrain", args=(run_id,))
    celery_worker_proc.start(env, queues="training")

    deadline = time.monotonic() + 300
    while True:
        with session_scope(settings.database_url) as s:
            run = s.get(TrainingRun, run_id)
            assert run is not None
            if run.status in ("done", "failed"):
                break
        if time.monotonic() > deadline:
            pytest.fail(f"training run still {run.status} after 300 s")
        time.sleep(0.5)

    assert run.status == "done", run.error
    assert run.epoch == run.epochs == 1 and "val_auc" in run.history
    with session_scope(settings.database_url) as s:
        version = s.get(ModelVersion, run.model_version_id)
        assert version is not None
        assert version.status == ModelStatus.CANDIDATE
        assert s.get(ModelVersion, active_id).status == ModelStatus.ACTIVE
        assert set(version.plots) == {"curves", "roc", "confusion"}
        for key in version.plots.values():
            assert (settings.storage_dir / key).is_file()
        assert {"train", "val", "test"} <= set(version.metrics)
        assert version.split_policy == "grouped"
        decision = version.decision or ""
    assert decision.startswith("not promoted: on the candidate's grouped test split too few images to tell")
    assert decision in (run.message or "") and "v1 is active" in (run.message or "")
