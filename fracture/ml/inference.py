"""Run a checkpoint on batches of images: decode, preprocess, batched forward under inference_mode."""

from __future__ import annotations

import dataclasses
import io
import os
import time
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


@dataclass
class StageTimes:
    """Seconds spent in each stage of predict(), for the worker's per-chunk timing line.

    decode, preprocess and thumbnail are summed over the decode threads, which run beside the forward passes (so
    they may add up to more than the wall time); decode_wait is how long the forward loop waited for a decoded
    image, forward the batched passes (features included), ood the detector's scoring of those features.
    """

    decode: float = 0.0
    preprocess: float = 0.0
    thumbnail: float = 0.0
    decode_wait: float = 0.0
    forward: float = 0.0
    ood: float = 0.0


# One decode's stage seconds: (decode, preprocess, thumbnail).
_DecodeTimes = tuple[float, float, float]
_Decoded = tuple[torch.Tensor, bytes | None] | str


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

    def warm_up(self) -> None:
        """Decode one small JPEG and run one batch of the serving size through the network, so that a fresh process's
        first real batch pays none of the first-call costs (decoder plugins, the allocator growing to the working set,
        primitives made per input shape; on a GPU the context, cuDNN and cuBLAS handles)."""
        from PIL import Image

        jpeg = io.BytesIO()
        Image.new("L", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), 128).save(jpeg, "JPEG")
        self._decode(jpeg.getvalue(), thumbnail=True)
        s = self.spec.image_size
        self.scores(torch.zeros((self.batch_size, 1, s, s), dtype=torch.uint8))

    @torch.inference_mode()
    def scores(self, batch_u8: torch.Tensor, times: StageTimes | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """P(positive class) and, from the same forward passes, the out-of-distribution score (None without a
        detector) for a (N, 1, S, S) uint8 batch; with `times`, the seconds of each part are added there."""
        t0 = time.perf_counter()
        x = batch_u8.to(self.device, non_blocking=True)
        x = normalize(x, self.spec)
        ood = None
        with self.spec.autocast(self.device):
            # Each view is laid out in channels_last.
            if self.detector is None:
                logits = forward_views(self.model, x, self.spec.views)
            else:
                logits, features = forward_views_features(self.model, x, self.spec.views)
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        t1 = time.perf_counter()
        if self.detector is not None:
            ood = self.detector.score(features.float()).cpu().numpy()
        if times is not None:
            times.forward += t1 - t0
            times.ood += time.perf_counter() - t1
        return probs, ood

    def _decode(self, source: Source, thumbnail: bool = False) -> _Decoded:
        return self._decode_timed(source, thumbnail)[0]

    def _decode_timed(self, source: Source, thumbnail: bool = False) -> tuple[_Decoded, _DecodeTimes]:
        t0 = t1 = t2 = time.perf_counter()
        try:
            # A large JPEG is decoded at a reduced scale no smaller than this: enough for the thumbnail too.
            size = max(self.spec.image_size, THUMBNAIL_SIZE) if thumbnail else self.spec.image_size
            gray = decode_gray(source, size, self.max_pixels)
            t1 = time.perf_counter()
            thumb = thumbnail_jpeg(gray) if thumbnail else None
            t2 = time.perf_counter()
            tensor = to_uint8_tensor(square(gray, self.spec.image_size))
            return (tensor, thumb), (t1 - t0, time.perf_counter() - t2, t2 - t1)
        except ImageError as e:
            return str(e), (time.perf_counter() - t0, 0.0, 0.0)
        except OSError as e:
            return f"could not read file: {e}", (time.perf_counter() - t0, 0.0, 0.0)

    def predict(self, sources: Iterable[Source], decode_threads: int = 2,
                thumbnails: bool = False, times: StageTimes | None = None) -> Iterator[Prediction]:
        """Classify `sources` in order, one Prediction each; decoding overlaps the forward passes.

        With `thumbnails`, each Prediction also carries a small JPEG made from the same decode (no second read).
        With `times`, the seconds of each stage are added there (see StageTimes).
        """
        pool = ThreadPoolExecutor(max_workers=decode_threads)
        try:
            decoded = iter(pool.map(lambda source: self._decode_timed(source, thumbnails), sources))
            pending: list[tuple[int, torch.Tensor, bytes | None]] = []
            index = -1
            while True:
                t0 = time.perf_counter()
                try:
                    item, (decode_s, preprocess_s, thumbnail_s) = next(decoded)
                except StopIteration:
                    break
                index += 1
                if times is not None:
                    times.decode_wait += time.perf_counter() - t0
                    times.decode += decode_s
                    times.preprocess += preprocess_s
                    times.thumbnail += thumbnail_s
                if isinstance(item, str):
                    yield from self._flush(pending, times)
                    pending = []
                    yield Prediction(index, None, None, item)
                else:
                    pending.append((index, *item))
                    if len(pending) >= self.batch_size:
                        yield from self._flush(pending, times)
                        pending = []
            yield from self._flush(pending, times)
        finally:
            # Interrupted (a task's soft time limit): drop the decodes not yet started instead of waiting for them.
            pool.shutdown(wait=False, cancel_futures=True)

    def _flush(self, pending: Sequence[tuple[int, torch.Tensor, bytes | None]],
               times: StageTimes | None = None) -> Iterator[Prediction]:
        if not pending:
            return
        batch = torch.stack([t for _, t, _ in pending])
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        probs, ood = self.scores(batch, times)
        for k, ((i, _, thumb), p) in enumerate(zip(pending, probs, strict=True)):
            yield Prediction(i, float(p), self.ckpt.label(float(p)), None, None if ood is None else float(ood[k]),
                             thumb)
