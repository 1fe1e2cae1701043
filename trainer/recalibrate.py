"""Recalibrate a trained checkpoint on its own data, without retraining: choose its threshold with the current
rule and fit its out-of-distribution detector (`fracture recalibrate`).

The split is rebuilt exactly as the training made it (the checkpoint records its policy and split seed, and the
data fingerprint must match), so the detector is fitted on the checkpoint's training split and calibrated on its
val split, as a new training would do. Used for the shipped release, trained before the detector existed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from fracture.ml.checkpoint import load_checkpoint, read_payload, save_checkpoint
from fracture.ml.preprocess import PreprocessSpec
from fracture.recipe import draws_acquisition
from trainer.prepared_data import Prepared, prepare_data
from trainer.split_evaluation import final_evaluation
from trainer.train import get_args_parser


class RecalibrateError(RuntimeError):
    """The data given is not the data the checkpoint was trained on."""


def checkpoint_data(payload: dict[str, Any], spec: PreprocessSpec, data: str | Path | None = None,
                    data_spec: str | Path | None = None, locked: str | Path | None = None,
                    cache_dir: Path | None = None) -> Prepared:
    """The data of a checkpoint's training, split again exactly as that training split it (its policy and split
    seed); raises RecalibrateError when the data's fingerprint is not the checkpoint's."""
    argv = ["--out", tempfile.gettempdir(), "--split", payload.get("split_policy", "grouped"),
            "--seed", str(payload.get("seed", 0)), "--augment", str(payload.get("augment") or "light")]
    if payload.get("split_seed") is not None:
        argv += ["--split-seed", str(payload["split_seed"])]
    argv += ["--data-spec", str(data_spec)] if data_spec else ["--data", str(data)]
    if locked:
        argv += ["--locked", str(locked)]
    prepared = prepare_data(get_args_parser().parse_args(argv), spec, cache_dir)
    if payload.get("data_fingerprint") and prepared.fingerprint != payload["data_fingerprint"]:
        raise RecalibrateError(f"the data's fingerprint {prepared.fingerprint[:12]} is not the checkpoint's "
                               f"{str(payload['data_fingerprint'])[:12]}: give the data it was trained on")
    return prepared


def recalibrate(model_path: Path, out: Path, data: str | None = None, data_spec: str | None = None,
                min_sensitivity: float = 0.96, min_specificity: float = 0.95,
                cache_dir: Path | None = None, locked: str | None = None,
                acquisition: bool | None = None) -> dict[str, Any]:
    """Write `out`: the checkpoint of `model_path` with a new threshold, detector and figures; return the figures.
    `acquisition` (default: whether the checkpoint was trained with that augmentation) fits the detector on
    acquisition-changed copies too (trainer.split_evaluation.final_evaluation)."""
    payload = read_payload(model_path)
    ckpt = load_checkpoint(model_path)
    prepared = checkpoint_data(payload, ckpt.preprocess, data, data_spec, locked, cache_dir=cache_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if acquisition is None:
        acquisition = draws_acquisition(str(payload.get("augment", "")))
    curves, threshold, metrics, detector = final_evaluation(ckpt.model.to(device), prepared, ckpt.preprocess,
                                                            device, min_sensitivity, min_specificity, acquisition)
    old = payload.get("metrics", {})
    metrics = old | metrics  # keeps selected_epoch and split_policy
    keep = {k: v for k, v in payload.items() if k not in {
        "format_version", "state_dict", "arch", "model_args", "classes", "positive_class", "preprocess", "threshold",
        "metrics", "data_fingerprint", "created_at", "ood_detector"}}
    keep["recalibrated_from"] = {"threshold": payload.get("threshold"), "metrics": old}
    keep["ood_acquisition"] = acquisition
    sha = save_checkpoint(out, ckpt.model.cpu(), ckpt.args, ckpt.preprocess, ckpt.classes, threshold,
                          positive_class=ckpt.positive_class, metrics=metrics,
                          data_fingerprint=payload.get("data_fingerprint"), extra=keep, detector=detector)
    return {"checkpoint": str(out), "sha256": sha, "threshold": threshold, "metrics": metrics,
            "previous_threshold": payload.get("threshold"), "curves": curves}


def get_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fracture recalibrate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="the checkpoint to recalibrate")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="the dataset root it was trained on")
    data.add_argument("--data-spec", help="the JSON list of datasets it was trained on")
    p.add_argument("--locked", default=None, help="the --locked file it was trained with")
    p.add_argument("--ood-acquisition", default=None, action=argparse.BooleanOptionalAction,
                   help="fit the detector on acquisition-changed copies too (default: if trained with them)")
    p.add_argument("--out", required=True, type=Path, help="where to write the recalibrated checkpoint")
    p.add_argument("--min-sensitivity", default=0.96, type=float)
    p.add_argument("--min-specificity", default=0.95, type=float)
    p.add_argument("--curves", type=Path, default=None,
                   help="also save each split's labels and served probabilities here (.npz), to study threshold rules")
    return p
