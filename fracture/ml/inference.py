"""Run a checkpoint on batches of images: decode, preprocess, batched forward under inference_mode."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from fracture.ml.checkpoint import Checkpoint, load_checkpoint
from fracture.ml.net import fold_batchnorm, has_features
from fracture.ml.preprocess import (
    DEFAULT_MAX_PIXELS,
    THUMBNAIL_SIZE,
    ImageError,
    decode_gray,
    forward_views,
    forward_views_features,
    normalize,
    square,
    thumbnail_jpeg,
    to_uint8_tensor,
)

Source = bytes | str | Path | BinaryIO


def pick_device() -> torch.device:
    """CUDA when present (and not disabled with FRACTURE_DEVICE=cpu), CPU otherwise."""
    wanted = os.environ.get("FRACTURE_DEVICE", "auto")
    if wanted != "auto":
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prediction:
    index: int
    probability: float | None
    label: str | None
    error: str | None
    # How unlike the training data the image looks to the model (1 or more: flagged), when it has a detector.
    ood_score: float | None = None
    # A small JPEG of the image, made from the same decode, when predict() was asked for thumbnails.
    thumbnail: bytes | None = None

    @property
    def in_distribution(self) -> bool | None:
        return None if self.ood_score is None else self.ood_score < 1.0


class Predictor:
    """A loaded model ready to classify batches of images on one device."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device | None = None, batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.ckpt = checkpoint
        self.device = device or pick_device()
        self.batch_size = batch_size
        self.max_pixels = max_pixels  # larger images are error rows (MAX_IMAGE_PIXELS), never decoded
        model = fold_batchnorm(checkpoint.model).to(self.device)
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format
        self.spec = checkpoint.preprocess
        detector = checkpoint.detector if has_features(self.model) else None
        self.detector = None if detector is None else dataclasses.replace(
            detector, means=detector.means.to(self.device), precision=detector.precision.to(self.device))

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | None = None, batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Predictor:
        device = device or pick_device()
        return cls(load_checkpoint(path, device), device, batch_size, max_pixels)

    def probabilities(self, batch_u8: torch.Tensor) -> np.ndarray:
        """P(positive class) for a (N, 1, S, S) uint8 batch."""
        return self.scores(batch_u8)[0]

    @torch.inference_mode()
    def scores(self, batch_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """P(positive class) and, from the same forward passes, the out-of-distribution score (None without a
        detector) for a (N, 1, S, S) uint8 batch."""
        x = batch_u8.to(self.device, non_blocking=True)
        x = normalize(x, self.spec)
        ood = None
        with self.spec.autocast(self.device):
            # Each view is laid out in channels_last.
            if self.detector is None:
                logits = forward_views(self.model, x, self.spec.views)
            else:
                logits, features = forward_views_features(self.model, x, self.spec.views)
        if self.detector is not None:
            ood = self.detector.score(features.float()).cpu().numpy()
        return torch.sigmoid(logits.float()).cpu().numpy(), ood

    def _decode(self, source: Source, thumbnail: bool = False) -> tuple[torch.Tensor, bytes | None] | str:
        try:
            # A large JPEG is decoded at a reduced scale no smaller than this: enough for the thumbnail too.
            size = max(self.spec.image_size, THUMBNAIL_SIZE) if thumbnail else self.spec.image_size
            gray = decode_gray(source, size, self.max_pixels)
            thumb = thumbnail_jpeg(gray) if thumbnail else None
            return to_uint8_tensor(square(gray, self.spec.image_size)), thumb
        except ImageError as e:
            return str(e)
        except OSError as e:
            return f"could not read file: {e}"

    def predict(self, sources: Iterable[Source], decode_threads: int = 2,
                thumbnails: bool = False) -> Iterator[Prediction]:
        """Classify `sources` in order, one Prediction each; decoding overlaps the forward passes.

        With `thumbnails`, each Prediction also carries a small JPEG made from the same decode (no second read).
        """
        pool = ThreadPoolExecutor(max_workers=decode_threads)
        try:
            decoded = pool.map(lambda source: self._decode(source, thumbnails), sources)
            pending: list[tuple[int, torch.Tensor, bytes | None]] = []
            for index, item in enumerate(decoded):
                if isinstance(item, str):
                    yield from self._flush(pending)
                    pending = []
                    yield Prediction(index, None, None, item)
                else:
                    pending.append((index, *item))
                    if len(pending) >= self.batch_size:
                        yield from self._flush(pending)
                        pending = []
            yield from self._flush(pending)
        finally:
            # Interrupted (a task's soft time limit): drop the decodes not yet started instead of waiting for them.
            pool.shutdown(wait=False, cancel_futures=True)

    def _flush(self, pending: Sequence[tuple[int, torch.Tensor, bytes | None]]) -> Iterator[Prediction]:
        if not pending:
            return
        batch = torch.stack([t for _, t, _ in pending])
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        probs, ood = self.scores(batch)
        for k, ((i, _, thumb), p) in enumerate(zip(pending, probs, strict=True)):
            yield Prediction(i, float(p), self.ckpt.label(float(p)), None, None if ood is None else float(ood[k]),
                             thumb)
