"""Perceptual hashes of X-rays under their 8 rotations and flips: how two files are found to be one picture.

Shared by the trainer's audit (duplicates within and across datasets) and the core's reviews (a reviewed image
is kept out of a training dataset when a locked evaluation dataset holds a near duplicate of it).
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 8
# Hamming distance (of 64 bits) up to which two perceptual hashes count as one picture. Measured on
# the shared dataset: at 4, groups stay small (largest 41 images); at 6 they chain into one of 499.
NEAR_DISTANCE = 4


def dihedral_hashes(gray: Image.Image) -> np.ndarray:
    """Perceptual hashes of the 8 rotations/flips of an image, as uint64 (index 0: as is)."""
    a = np.asarray(gray)
    out = np.empty(8, dtype=np.uint64)
    for i in range(8):
        t = np.rot90(a, i % 4)
        if i >= 4:
            t = np.fliplr(t)
        bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(t)), hash_size=HASH_SIZE).hash.flatten()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


def as_hex(hashes: np.ndarray) -> list[str]:
    """The 8 hashes as the hex strings a dataset's hashes.json keeps."""
    return [f"{int(h):016x}" for h in hashes]


def base_hashes(theirs: dict[str, list[str]]) -> np.ndarray:
    """The as-is hashes (index 0) of a hashes.json mapping {md5: [8 hex hashes]}, as uint64."""
    return np.array([int(h[0], 16) for h in theirs.values()], dtype=np.uint64)


def from_hex(hexes: list[list[str]]) -> np.ndarray:
    """Rows of 8 hex hashes (a hashes.json's values) as an (N, 8) uint64 array."""
    return np.array([[int(h, 16) for h in row] for row in hexes], dtype=np.uint64).reshape(len(hexes), 8)


def view_distances(views: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Hamming distances (N, M) from N images, each as its 8 dihedral hashes (N, 8), to M hashes as they are:
    the nearest of an image's 8 views counts, so a rotated or flipped copy is as near as the picture itself."""
    return np.bitwise_count(views[:, :, None] ^ base[None, None, :]).min(axis=1)


def near_mask(views: np.ndarray, base: np.ndarray, max_distance: int = NEAR_DISTANCE) -> np.ndarray:
    """Which of N images (N, 8) are a near duplicate of any of the M hashes `base`: a bool array (N,)."""
    near = np.zeros(len(views), dtype=bool)
    if len(base) == 0:
        return near
    for start in range(0, len(views), 256):  # blocks keep the (N x 8 x M) distances small
        near[start : start + 256] = view_distances(views[start : start + 256], base).min(axis=1) <= max_distance
    return near


def near_any(views: np.ndarray, theirs: dict[str, list[str]], max_distance: int = NEAR_DISTANCE) -> bool:
    """Whether an image (its 8 dihedral hashes) is a near duplicate of any image of a hashes.json mapping."""
    return bool(near_mask(views[None, :], base_hashes(theirs), max_distance)[0])
