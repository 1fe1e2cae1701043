"""Run one TrainingRun end to end: train, record progress, register the version, apply promotion."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from fracture import trainings, val_auc
from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import ModelVersion, TrainingRun
from fracture.registry import active_version, register_checkpoint, store_plots, verified_checkpoint
from fracture.storage import Storage
from trainer.heartbeat import beating
from trainer.promotion import decide_and_apply
from trainer.run_files import RunLog, clean_folder, data_argv, sentence

logger = logging.getLogger(__name__)  # the process's log; the run's own log file is `RunLog`

# Parameters a run may set (from the page, the API or a schedule), mapped to trainer options.
ALLOWED = {"split", "arch", "width", "depths", "image_size", "epochs", "batch_size", "lr", "weight_decay",
           "min_sensitivity", "min_specificity", "views", "seed", "augment", "intensity", "framing", "output_stride",
           "pooling", "box_weight", "interpolate", "weights",
           "dry_run"}


class Cancelled(Exception):
    """Someone asked the run to stop: it ends `cancelled` and registers nothing."""


def build_args(settings: Settings, run_id: int, params: dict[str, Any]) -> argparse.Namespace:
    """Trainer arguments for a run: its params over the trainer's defaults; its datasets (or FRACTURE_DATASET)."""
    from trainer.train import get_args_parser

    out = Storage(settings.storage_dir).path(f"runs/{run_id}")
    argv = [*data_argv(settings, params, out), "--out", str(out), "--no-progress"]
    if params.get("start_from"):
        argv += ["--init", str(start_weights(settings, int(params["start_from"])))]
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


def start_weights(settings: Settings, version_id: int) -> Path:
    """The checkpoint of the version a run fine-tunes (its `start_from`), verified against its recorded SHA-256."""
    with session_scope(settings.database_url) as s:  # versions are never deleted: check_params found this one
        return verified_checkpoint(settings, s.get_one(ModelVersion, version_id))


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

    storage = Storage(settings.storage_dir)
    log = RunLog(storage.path(trainings.log_key(run_id)))

    def stop_if_cancelled() -> None:
        with session_scope(url) as s:
            if trainings.cancel_requested(s, run_id):
                raise Cancelled

    ids = {"run_id": run_id}

    def on_epoch(epoch: int, epochs: int, history: dict[str, list[float]]) -> None:
        with session_scope(url) as s:
            trainings.record_epoch(s, run_id, epoch, epochs, history)
        last = {k: round(v[-1], 4) for k, v in history.items() if v}
        logger.info("training run %d: epoch %d/%d %s", run_id, epoch, epochs, last, extra=ids)
        stop_if_cancelled()

    try:
        with beating(settings, lambda s: trainings.beat_run(s, run_id)):  # the reaper fails a run whose beats stop
            logger.info("training run %d started with %s", run_id, params, extra=ids)
            log(f"training run {run_id} started with {params}")
            args = build_args(settings, run_id, params)
            log("fracture train " + " ".join(args.argv))
            summary = main(args, on_epoch=on_epoch, cache_dir=settings.home / "cache", log=log)
            stop_if_cancelled()  # asked during the final evaluation: still nothing is registered
            version_id, outcome = _register(settings, run_id, summary, force=bool(params.get("force")))
        log(f"registered model version {outcome}")
        logger.info("training run %d finished: model version %s", run_id, outcome, extra=ids)
        return version_id
    except Cancelled:
        clean_folder(storage.path(f"runs/{run_id}"))
        log("cancelled on request: stopped after the epoch, registered nothing, removed the checkpoints")
        with session_scope(url) as s:
            run = s.get_one(TrainingRun, run_id)
            trainings.cancel_run(s, run_id, f"cancelled after epoch {run.epoch} of {run.epochs}")
        logger.info("training run %d cancelled on request", run_id, extra=ids)
        return None
    except Exception as e:
        log.exception(e)
        logger.exception("training run %d failed: %s", run_id, sentence(e), extra=ids)
        with session_scope(url) as s:
            trainings.fail_run(s, run_id, sentence(e))
        return None


def _register(settings: Settings, run_id: int, summary: dict[str, Any], force: bool) -> tuple[int, str]:
    """Register the run's checkpoint, apply the promotion gate, end the run done: (version id, the run's result)."""
    storage = Storage(settings.storage_dir)
    with session_scope(settings.database_url) as s:
        version = register_checkpoint(s, storage, summary["checkpoint"], notes=f"training run {run_id}")
        plots = store_plots(storage, version.name, Path(summary["checkpoint"]).parent / "plots")
        card = Path(summary["checkpoint"]).parent / "model_card.md"
        if card.is_file():
            shutil.copyfile(card, storage.path(f"models/{version.name}/model_card.md"))
        version.plots = plots
        version_id, name, auc = version.id, version.name, version.selection_metric
    # Committed first: the safe-promotion check measures the candidate through Evaluation rows of its own.
    test_split = (summary.get("splits") or {}).get("test")
    _, reason = decide_and_apply(settings, version_id, test_split, force=force)
    served = val_auc.served_text(auc, (summary.get("preprocess") or {}).get("views"))
    with session_scope(settings.database_url) as s:
        current = active_version(s)
        kept = f"; {current.name} is active" if current is not None else ""
        outcome = f"{name}: {served}; {reason}{kept}"
        trainings.finish_run(s, run_id, version_id, f"registered {outcome}")
    return version_id, outcome
