"""Run one TrainingRun end to end: train, record progress, register the version, apply promotion."""

from __future__ import annotations

import argparse
import shutil
import traceback
from pathlib import Path
from typing import Any

from fracture import trainings
from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import TrainingRun
from fracture.registry import active_version, promote, register_checkpoint, should_promote, store_plots
from fracture.storage import Storage

# Parameters a run may set (from the page, the API or a schedule), mapped to trainer options.
ALLOWED = {"split", "arch", "width", "depths", "image_size", "epochs", "batch_size", "lr", "weight_decay",
           "min_sensitivity", "views", "seed", "weights", "dry_run"}


def build_args(settings: Settings, run_id: int, params: dict[str, Any]) -> argparse.Namespace:
    """Trainer arguments for a run: its params over the trainer's defaults; data from params or settings."""
    from trainer.train import get_args_parser

    data = params.get("data") or (str(settings.dataset_dir) if settings.dataset_dir else None)
    if not data:
        raise ValueError("no dataset folder: set FRACTURE_DATASET or give 'data' in the run's parameters")
    out = Storage(settings.storage_dir).path(f"runs/{run_id}")
    argv = ["--data", str(data), "--out", str(out), "--no-progress"]
    for key, value in params.items():
        if key not in ALLOWED or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    if (out / "last.pt").is_file():
        argv.append("--resume")  # a redelivered task continues where the lost worker stopped
    args = get_args_parser().parse_args(argv)
    args.argv = argv
    return args


def run_training(settings: Settings, run_id: int) -> int | None:
    """Execute TrainingRun `run_id`; returns the new model version's id (None on failure)."""
    from trainer.train import main

    url = settings.database_url
    with session_scope(url) as s:
        params = trainings.start_run(s, run_id)
    if params is None:
        with session_scope(url) as s:
            run = s.get(TrainingRun, run_id)
            return run.model_version_id if run is not None else None

    def on_epoch(epoch: int, epochs: int, history: dict[str, list[float]]) -> None:
        with session_scope(url) as s:
            trainings.record_epoch(s, run_id, epoch, epochs, history)

    try:
        args = build_args(settings, run_id, params)
        summary = main(args, on_epoch=on_epoch, cache_dir=settings.home / "cache")
        return _register(settings, run_id, summary, force=bool(params.get("force")))
    except Exception as e:
        with session_scope(url) as s:
            trainings.fail_run(s, run_id, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        return None


def _register(settings: Settings, run_id: int, summary: dict[str, Any], force: bool) -> int:
    storage = Storage(settings.storage_dir)
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, storage, summary["checkpoint"], notes=f"training run {run_id}")
        plots = store_plots(storage, version.name, Path(summary["checkpoint"]).parent / "plots")
        card = Path(summary["checkpoint"]).parent / "model_card.md"
        if card.is_file():
            shutil.copyfile(card, storage.path(f"models/{version.name}/model_card.md"))
        version.plots = plots
        current = active_version(s)
        promoted = should_promote(version, current, force=force)
        if promoted:
            promote(s, version)
        message = (f"registered {version.name} (val AUC {version.selection_metric:.4f}); "
                   + ("promoted to active" if promoted else f"kept {current.name if current else '-'} active"))
        trainings.finish_run(s, run_id, version.id, message)
        return version.id
