"""Read a dataset laid out as ROOT/{train,val,test}/{class}/FILE into a flat list of samples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    """One file of the dataset: where it lies, which split and class the layout gives it."""

    path: Path
    split: str
    label: str
    md5: str

    @property
    def rel(self) -> str:
        return f"{self.split}/{self.label}/{self.path.name}"


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def discover_classes(root: Path) -> list[str]:
    """The class names: the folder names under the splits, sorted (here fractured, not fractured)."""
    names = {p.name for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()}
    if len(names) != 2:
        raise ValueError(f"expected two class folders under {root}/{{train,val,test}}, found {sorted(names)}")
    return sorted(names)


def scan(root: str | Path) -> tuple[list[Sample], list[str]]:
    """List every image file of the dataset with its split, class and MD5."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    classes = discover_classes(root)
    samples: list[Sample] = []
    for split in SPLITS:
        for label in classes:
            folder = root / split / label
            if not folder.is_dir():
                continue
            for p in sorted(folder.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append(Sample(p, split, label, md5_file(p)))
    if not samples:
        raise ValueError(f"no images under {root}")
    return samples, classes


def fingerprint(samples: list[Sample]) -> str:
    """A SHA-256 over (split, class, file name, MD5) of every file: names the exact data trained on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.split, s.label, s.path.name, s.md5)):
        h.update(f"{s.split}\t{s.label}\t{s.path.name}\t{s.md5}\n".encode())
    return h.hexdigest()
