"""Write what a finished training leaves in its run folder: plots, the checkpoint serving needs, the model card;
and return the run's summary."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from fracture.ml.checkpoint import POSITIVE_CLASS, save_checkpoint
from fracture.ml.net import ModelArgs
from fracture.ml.preprocess import PreprocessSpec
from fracture.recipe import draws_acquisition
from trainer import card, plots
from trainer.box_supervision import box_weight_of
from trainer.prepared_data import Prepared, split_sizes
from trainer.split_evaluation import FinalEvaluation, test_members
from trainer.training_state import TrainingState


def write_checkpoint(args: argparse.Namespace, out: Path, state: TrainingState, margs: ModelArgs,
                     spec: PreprocessSpec, data: Prepared, evaluation: FinalEvaluation) -> tuple[Path, str, str]:
    """Save the kept network with everything serving needs to OUT/model.pt: (path, its SHA-256, the command)."""
    _, threshold, metrics, detector = evaluation
    # --resume continues the same run to the same result, so the command that reproduces it leaves it out.
    command = "fracture train " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) if a != "--resume")
    ckpt = out / "model.pt"
    box_weight = box_weight_of(args)
    sha = save_checkpoint(
        ckpt, state.model.cpu(), margs, spec, data.classes, threshold,
        positive_class=POSITIVE_CLASS if POSITIVE_CLASS in data.classes else data.classes[0],
        metrics=metrics, data_fingerprint=data.fingerprint, detector=detector,
        extra={"split_policy": args.split, "selection_metric": metrics.get("val", {}).get("roc_auc"),
               "history": state.history, "command": command, "seed": args.seed,
               "split_seed": args.seed if args.split_seed is None else args.split_seed,
               "augment": args.augment, "ood_acquisition": draws_acquisition(args.augment),
               "init": str(args.init) if getattr(args, "init", None) else None,
               "interpolate": getattr(args, "interpolate", 1.0),
               "boxes": str(args.boxes) if box_weight else None, "box_weight": box_weight or None,
               "box_loss": getattr(args, "box_loss", "share") if box_weight else None,
               "box_cells": getattr(args, "box_cells", "touched") if box_weight else None},
    )
    return ckpt, sha, command


def write_artifacts(args: argparse.Namespace, out: Path, state: TrainingState, margs: ModelArgs, spec: PreprocessSpec,
                    data: Prepared, evaluation: FinalEvaluation, device: torch.device, t0: float) -> dict[str, Any]:
    """Write the plots, the checkpoint and the model card; return the run's summary."""
    curves, threshold, metrics, _ = evaluation
    plot_files = plots.write_all(out / "plots", state.history, curves, metrics)
    ckpt, sha, command = write_checkpoint(args, out, state, margs, spec, data, evaluation)
    summary = {"checkpoint": str(ckpt), "sha256": sha, "metrics": metrics, "threshold": threshold,
               "history": state.history, "plots": {k: str(v) for k, v in plot_files.items()},
               "data_fingerprint": data.fingerprint, "audit": data.report.to_dict(), "split_sizes": split_sizes(data),
               "command": command, "model_args": margs.to_dict(), "preprocess": spec.to_dict(),
               "seconds": time.time() - t0, "device": device.type, "datasets": data.files,
               "locked_out": data.locked, "corrections": data.corrections, "splits": {"test": test_members(data)}}
    compare = json.loads(Path(args.compare).read_text()) if getattr(args, "compare", None) else None
    card.write(out, summary, compare)
    return summary
