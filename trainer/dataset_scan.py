"""Read a dataset into a flat list of samples: ROOT/{train,val,test}/<class>/FILE, or ROOT/<class>/FILE (no splits).

A dataset without splits is read as one `train` split: the grouped split makes val and test from it.
"""

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


LAYOUTS = ("splits", "flat")


def detect_layout(root: Path) -> str:
    """"splits" when ROOT has a train, val or test folder, else "flat" (ROOT/<class>/...)."""
    return "splits" if any((root / s).is_dir() for s in SPLITS) else "flat"


def _class_folders(root: Path, layout: str) -> dict[str, list[Path]]:
    """Folders of each split: {split: [class folder, ...]} (a flat dataset is all `train`)."""
    if layout == "flat":
        return {"train": sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))}
    return {s: sorted(p for p in (root / s).iterdir() if p.is_dir()) for s in SPLITS if (root / s).is_dir()}


def discover_classes(root: Path, layout: str | None = None) -> list[str]:
    """The class names: the class folders' names, sorted (here fractured, not fractured)."""
    layout = layout or detect_layout(root)
    names = {p.name for folders in _class_folders(root, layout).values() for p in folders}
    if len(names) != 2:
        where = f"{root}/{{train,val,test}}" if layout == "splits" else str(root)
        raise ValueError(f"expected two class folders under {where}, found {sorted(names)}")
    return sorted(names)


def scan(root: str | Path, members: set[str] | None = None) -> tuple[list[Sample], list[str]]:
    """List every image file of the dataset with its split, class and MD5 (only `members`, relative paths, if given)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    layout = detect_layout(root)
    classes = discover_classes(root, layout)
    samples: list[Sample] = []
    for split, folders in _class_folders(root, layout).items():
        for folder in folders:
            for p in sorted(folder.rglob("*")):
                if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                    continue
                if members is not None and p.relative_to(root).as_posix() not in members:
                    continue
                samples.append(Sample(p, split, folder.name, md5_file(p)))
    if not samples:
        raise ValueError(f"no images under {root}")
    return samples, classes


def fingerprint(samples: list[Sample]) -> str:
    """A SHA-256 over (split, class, file name, MD5) of every file: names the exact data trained on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.split, s.label, s.path.name, s.md5)):
        h.update(f"{s.split}\t{s.label}\t{s.path.name}\t{s.md5}\n".encode())
    return h.hexdigest()
