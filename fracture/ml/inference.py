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
from fracture.ml.gpu_decode import (
    Jpeg,
    choose_decoder,
    decode_jpegs,
    draft,
    encode_thumbnail,
    resize,
    sniff_jpeg,
    thumbnail_size,
)
from fracture.ml.net import fold_batchnorm, has_features
from fracture.ml.preprocess import (
    DEFAULT_MAX_PIXELS,
    THUMBNAIL_SIZE,
    ImageError,
    decode_gray,
    fit_input,
    forward_views,
    forward_views_features,
    normalize,
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


def device_defaults(device: torch.device) -> tuple[int, int]:
    """(batch size, decode threads) for a predictor on `device` when BATCH_SIZE and DECODE_THREADS are not set.

    The CPU's are those measured on 2 cores (bench/run.py); on a GPU the network wants large batches (an H100 ran
    22,000 images/s at 512) and decoding every core's reading and header parsing (bench/gpu.py measures both).
    """
    if device.type == "cuda":
        return 256, os.cpu_count() or 4
    return 32, 2


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
# A file as it leaves a decode thread: decoded (Pillow), or a JPEG left for the batched torchvision decode.
_Read = _Decoded | Jpeg


class Predictor:
    """A loaded model ready to classify batches of images on one device."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device | None = None, batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS, *, decoder: str = "auto", decode_threads: int | None = None,
    ) -> None:
        self.ckpt = checkpoint
        self.device = device or pick_device()
        default_batch, default_threads = device_defaults(self.device)
        self.batch_size = batch_size or default_batch
        self.decode_threads = decode_threads or default_threads
        # "pillow" or "torchvision" (JPEGs decoded in batches on the device; fracture.ml.gpu_decode).
        self.decoder = choose_decoder(decoder, self.device)
        self.max_pixels = max_pixels  # larger images are error rows (MAX_IMAGE_PIXELS), never decoded
        model = fold_batchnorm(checkpoint.model).to(self.device)
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format
        self.spec = checkpoint.preprocess
        detector = checkpoint.detector if has_features(self.model) else None
        self.detector = None if detector is None else dataclasses.replace(
            detector, means=detector.means.to(self.device), precision=detector.precision.to(self.device))

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | None = None, batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS, *, decoder: str = "auto", decode_threads: int | None = None,
    ) -> Predictor:
        device = device or pick_device()
        return cls(load_checkpoint(path, device), device, batch_size, max_pixels, decoder=decoder,
                   decode_threads=decode_threads)

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
        item = self._read(jpeg.getvalue())[0] if self.decoder == "torchvision" else None
        if isinstance(item, Jpeg):  # the decoder's library and, on a GPU, nvJPEG's handles
            list(self._decode_batch([(0, item, None)], thumbnails=True))
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
            size = max(self.spec.decode_size, THUMBNAIL_SIZE) if thumbnail else self.spec.decode_size
            gray = decode_gray(source, size, self.max_pixels)
            t1 = time.perf_counter()
            thumb = thumbnail_jpeg(gray) if thumbnail else None
            t2 = time.perf_counter()
            tensor = to_uint8_tensor(fit_input(gray, self.spec))
            return (tensor, thumb), (t1 - t0, time.perf_counter() - t2, t2 - t1)
        except ImageError as e:
            return str(e), (time.perf_counter() - t0, 0.0, 0.0)
        except OSError as e:
            return f"could not read file: {e}", (time.perf_counter() - t0, 0.0, 0.0)

    def _read(self, source: Source, thumbnail: bool = False) -> tuple[_Read, _DecodeTimes]:
        """The torchvision decoder's work in a decode thread: read the file; a JPEG torchvision decodes as Pillow
        does is left for the batched decode, anything else is decoded here by the Pillow path (from the bytes read)."""
        t0 = time.perf_counter()
        data: Source
        if isinstance(source, bytes):
            data = source
        else:
            try:
                data = Path(source).read_bytes() if isinstance(source, str | Path) else source.read()
            except OSError:
                data = source  # the Pillow path words the error row as it always has
        if isinstance(data, bytes):
            jpeg = sniff_jpeg(data, self.max_pixels)
            if jpeg is not None:
                return jpeg, (time.perf_counter() - t0, 0.0, 0.0)
        read_s = time.perf_counter() - t0
        item, (decode_s, preprocess_s, thumbnail_s) = self._decode_timed(data, thumbnail)
        return item, (read_s + decode_s, preprocess_s, thumbnail_s)

    def predict(self, sources: Iterable[Source], decode_threads: int | None = None,
                thumbnails: bool = False, times: StageTimes | None = None) -> Iterator[Prediction]:
        """Classify `sources` in order, one Prediction each; decoding overlaps the forward passes.

        With `thumbnails`, each Prediction also carries a small JPEG made from the same decode (no second read).
        With `times`, the seconds of each stage are added there (see StageTimes). The decode threads decode with
        Pillow, or (decoder "torchvision") read the files and leave the JPEGs to one batched decode per batch.
        """
        threads = decode_threads or self.decode_threads
        pool = ThreadPoolExecutor(max_workers=threads)
        work = self._read if self.decoder == "torchvision" else self._decode_timed
        # The thumbnails of the batched decode are encoded in threads of their own: `pool` holds every read queued.
        thumb_pool = ThreadPoolExecutor(max_workers=threads) if thumbnails and self.decoder == "torchvision" else None
        try:
            decoded = iter(pool.map(lambda source: work(source, thumbnails), sources))
            pending: list[tuple[int, torch.Tensor | Jpeg, bytes | None]] = []
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
                    yield from self._decode_batch(pending, thumbnails, times, thumb_pool)
                    pending = []
                    yield Prediction(index, None, None, item)
                else:
                    pending.append((index, item, None) if isinstance(item, Jpeg) else (index, *item))
                    if len(pending) >= self.batch_size:
                        yield from self._decode_batch(pending, thumbnails, times, thumb_pool)
                        pending = []
            yield from self._decode_batch(pending, thumbnails, times, thumb_pool)
        finally:
            # Interrupted (a task's soft time limit): drop the decodes not yet started instead of waiting for them.
            pool.shutdown(wait=False, cancel_futures=True)
            if thumb_pool is not None:
                thumb_pool.shutdown(wait=False, cancel_futures=True)

    def _decode_batch(self, pending: Sequence[tuple[int, torch.Tensor | Jpeg, bytes | None]], thumbnails: bool,
                      times: StageTimes | None = None, pool: ThreadPoolExecutor | None = None,
                      ) -> Iterator[Prediction]:
        """Classify a batch (its JPEGs left to torchvision decoded first: _prepare), one Prediction per item, in
        order; an image that could not be decoded gets its error row in its place."""
        images, thumbs = self._prepare(pending, thumbnails, times, pool)
        ok = [k for k, image in enumerate(images) if isinstance(image, torch.Tensor)]
        probs: np.ndarray | list[float] = []
        ood = None
        if ok:
            tensors = [t for t in images if isinstance(t, torch.Tensor)]
            if all(t.device.type == "cpu" for t in tensors):
                batch = torch.stack(tensors)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
            else:  # decoded on the device, with any the Pillow path decoded (on the CPU) moved beside them
                batch = torch.stack([t.to(self.device, non_blocking=True) for t in tensors])
            probs, ood = self.scores(batch, times)
        row = dict(zip(ok, range(len(ok)), strict=True))
        for k, (i, _, _) in enumerate(pending):
            error = images[k]
            if isinstance(error, str):
                yield Prediction(i, None, None, error)
                continue
            p = float(probs[row[k]])
            yield Prediction(i, p, self.ckpt.label(p), None, None if ood is None else float(ood[row[k]]), thumbs[k])

    def _prepare(self, pending: Sequence[tuple[int, torch.Tensor | Jpeg, bytes | None]], thumbnails: bool,
                 times: StageTimes | None = None, pool: ThreadPoolExecutor | None = None,
                 ) -> tuple[list[torch.Tensor | str], list[bytes | None]]:
        """Each item's (1, S, S) uint8 input (or the reason it has none) and thumbnail: the JPEGs left to torchvision
        decoded in one call on the device and resized there (their thumbnails encoded in `pool`), a JPEG it refuses
        by the Pillow path."""
        images: list[torch.Tensor | str] = [t if isinstance(t, torch.Tensor) else "" for _, t, _ in pending]
        thumbs = [thumb for _, _, thumb in pending]
        at = [k for k, (_, t, _) in enumerate(pending) if isinstance(t, Jpeg)]
        jpegs = [t for _, t, _ in pending if isinstance(t, Jpeg)]
        if jpegs:
            t0 = time.perf_counter()
            decoded = decode_jpegs(jpegs, self.device)
            t1 = time.perf_counter()
            smalls: dict[int, torch.Tensor] = {}
            from torchvision.transforms.v2.functional import equalize  # loaded already: decode_jpegs is torchvision's
            by_shape: dict[tuple[int, int], list[int]] = {}
            for k, jpeg, image in zip(at, jpegs, decoded, strict=True):
                if image is None:  # refused by torchvision: Pillow decodes it, or words why it cannot
                    item = self._decode(jpeg.data.numpy().tobytes(), thumbnails)
                    images[k], thumbs[k] = (item, None) if isinstance(item, str) else item
                    continue
                # As the Pillow path: a large JPEG reduced first, to no less than the thumbnail's size if one is made.
                least = self.spec.decode_size
                image = draft(image, max(least, THUMBNAIL_SIZE) if thumbnails else least)
                if thumbnails:  # the thumbnail shows the image as it came, before any equalisation
                    smalls[k] = resize(image, thumbnail_size(image.shape[-2], image.shape[-1], THUMBNAIL_SIZE))
                if self.spec.equalize_decoded:  # as fit_input: equalised before the resize
                    image = equalize(image)
                by_shape.setdefault((image.shape[-2], image.shape[-1]), []).append(k)
                images[k] = image
            s = self.spec.image_size
            for ks in by_shape.values():  # images of one size resized in one call (most of a dataset often is)
                same = resize(torch.stack([images[k] for k in ks]), (s, s))  # type: ignore[misc]
                for k, image in zip(ks, same, strict=True):
                    images[k] = image
            t2 = time.perf_counter()
            if smalls:
                cpu = [smalls[k].cpu() for k in smalls]
                encoded = pool.map(encode_thumbnail, cpu) if pool is not None else map(encode_thumbnail, cpu)
                for k, thumb in zip(smalls, encoded, strict=True):
                    thumbs[k] = thumb
            if times is not None:
                times.decode += t1 - t0
                times.preprocess += t2 - t1
                times.thumbnail += time.perf_counter() - t2
        return images, thumbs
