"""Decode every distinct image once into a uint8 tensor (cached on disk), and batch the rows of it."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fracture.ml.preprocess import ImageError, decode_gray, load_u8, square, to_uint8_tensor
from fracture.ml.preprocess import PreprocessSpec as Spec


def decode_all(paths: dict[str, Path], spec: Spec, cache_dir: Path | None = None, threads: int = 2,
               source_size: int | None = None) -> tuple[dict[str, int], torch.Tensor, dict[str, str]]:
    """Decode each MD5's file once at the model size: (index by MD5, (N,1,S,S) uint8, errors by MD5).

    With `source_size`, each image is kept instead as decoded, squashed to that square size and not yet equalised
    or trimmed: the form on which "equalize-full" training draws its acquisition changes before fit_input makes the
    network's input of it (trainer.augmentation). The result is cached on disk keyed by the MD5s and the form, so a
    resumed or repeated run (and the audit of the same data) does not decode again.
    """
    md5s = sorted(paths)
    if source_size is not None:
        form = f"|source{source_size}"
    else:  # the cached input's own form
        form = f"|{spec.image_size}" + ("|equalized" if spec.equalize_decoded else "")
    key = hashlib.sha256(("\n".join(md5s) + form).encode()).hexdigest()[:16]
    cache = cache_dir / f"decoded-{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        blob = torch.load(cache, weights_only=True)
        return dict(zip(blob["md5s"], range(len(blob["md5s"])), strict=True)), blob["images"], blob["errors"]

    def one(m: str) -> torch.Tensor | str:
        try:
            if source_size is not None:
                return to_uint8_tensor(square(decode_gray(paths[m], spec.decode_size), source_size))
            return load_u8(paths[m], spec)
        except ImageError as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, md5s))
    errors = {m: r for m, r in zip(md5s, results, strict=True) if isinstance(r, str)}
    good = [m for m in md5s if m not in errors]
    s = spec.image_size if source_size is None else source_size
    kept = [r for r in results if not isinstance(r, str)]
    images = torch.stack(kept) if kept else torch.zeros((0, 1, s, s), dtype=torch.uint8)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"md5s": good, "images": images, "errors": errors}, cache)
    return {m: i for i, m in enumerate(good)}, images, errors


def batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool) -> list[np.ndarray]:
    """Split row numbers 0..n-1 into batches, shuffled by `generator` when asked."""
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
