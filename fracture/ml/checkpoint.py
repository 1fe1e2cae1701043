"""The checkpoint contract: a plain dict, loadable with weights_only=True, that rebuilds the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fracture.ml.net import ModelArgs, build_model
from fracture.ml.ood import Detector
from fracture.ml.preprocess import PreprocessSpec

FORMAT_VERSION = 1
POSITIVE_CLASS = "fractured"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not follow the contract."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network in eval mode and everything needed to serve it."""

    model: nn.Module
    args: ModelArgs
    preprocess: PreprocessSpec
    classes: list[str]
    positive_class: str
    threshold: float
    meta: dict[str, Any]
    detector: Detector | None = None  # None: a checkpoint from before the detector, served without the flag

    def label(self, probability: float) -> str:
        """The class name for a probability of the positive class, at the chosen threshold."""
        negative = next(c for c in self.classes if c != self.positive_class)
        return self.positive_class if probability >= self.threshold else negative


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    args: ModelArgs,
    preprocess: PreprocessSpec,
    classes: list[str],
    threshold: float,
    *,
    positive_class: str = POSITIVE_CLASS,
    metrics: dict[str, Any] | None = None,
    data_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
    detector: Detector | None = None,
) -> str:
    """Write the checkpoint atomically and return the SHA-256 of the file."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "state_dict": state,
        "arch": args.arch,
        "model_args": args.to_dict(),
        "classes": list(classes),
        "positive_class": positive_class,
        "preprocess": preprocess.to_dict(),
        "threshold": float(threshold),
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    if detector is not None:
        payload["ood_detector"] = detector.to_payload()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return sha256_file(path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_payload(path: str | Path) -> dict[str, Any]:
    """Read the raw checkpoint dict (weights_only: a checkpoint can never run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"model file {path.name} is corrupt or unreadable: {e}") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_args" not in payload:
        raise CheckpointError(f"model file {path.name} is not a fracture checkpoint")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from the checkpoint alone and put it in eval mode on `device`."""
    payload = read_payload(path)
    try:
        args = ModelArgs.from_dict(payload["model_args"])
        model = build_model(args)
        model.load_state_dict(payload["state_dict"])
    except Exception as e:
        raise CheckpointError(f"model file {Path(path).name} does not match its architecture: {e}") from None
    model.eval().to(device)
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "ood_detector")}
    return Checkpoint(
        model=model,
        args=args,
        preprocess=PreprocessSpec.from_dict(payload["preprocess"]),
        classes=list(payload["classes"]),
        positive_class=payload.get("positive_class", POSITIVE_CLASS),
        threshold=float(payload["threshold"]),
        meta=meta,
        detector=Detector.from_payload(payload.get("ood_detector")),
    )
