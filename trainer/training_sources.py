"""A run's training data: the union of its datasets, less every image of a locked (evaluation) dataset.

`--data-spec FILE` names the datasets (a JSON list of {"name", "root", "members", "additions"}: "additions" lists
the reviewed images an admin added to the dataset, {"file", "label", "md5", "relabelled"}, trained on but never
validated or tested on); `--locked FILE` names the
ready evaluation datasets whose images are never trained on (a JSON list of {"name", "hashes"}: the path of the
hashes.json their validation wrote, MD5 -> 8 perceptual hashes). An image is left out when its bytes are those
of a locked image, or when it is a near duplicate (a rotated, flipped or resized copy) of one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fracture.image_hashes import base_hashes, dihedral_hashes, near_mask
from trainer.dataset_scan import Sample, md5_file, scan


class TrainingDataError(ValueError):
    """The training data cannot be used as asked; the message is one readable sentence."""


@dataclass(frozen=True)
class Addition:
    """A reviewed image added to a dataset: its copy in storage, its reviewed label, and whether that label
    differs from the model's prediction (None: no longer known)."""

    file: Path
    label: str
    relabelled: bool | None = None


@dataclass(frozen=True)
class Source:
    """One dataset of a run: its name, folder, the relative paths it is limited to (None: all of it), and the
    reviewed images added to it."""

    name: str
    root: Path
    members: frozenset[str] | None = None
    additions: tuple[Addition, ...] = ()


def read_spec(path: str | Path) -> list[Source]:
    """The datasets of a --data-spec file."""
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list) or not items:
        raise TrainingDataError(f"the data spec {path} names no dataset")
    return [Source(str(i.get("name") or i["root"]), Path(i["root"]),
                   frozenset(i["members"]) if i.get("members") is not None else None,
                   tuple(Addition(Path(a["file"]), str(a["label"]), a.get("relabelled"))
                         for a in i.get("additions") or ())) for i in items]


def scan_union(sources: list[Source]) -> tuple[list[Sample], list[str], dict[str, int]]:
    """Scan every dataset: (all samples, the classes they share, files per dataset name)."""
    samples: list[Sample] = []
    classes: list[str] | None = None
    files: dict[str, int] = {}
    for source in sources:
        if not source.root.is_dir():
            raise TrainingDataError(f"the folder of the dataset {source.name!r} is missing: {source.root}")
        found, names = scan(source.root, set(source.members) if source.members is not None else None)
        if classes is not None and names != classes:
            raise TrainingDataError(f"the dataset {source.name!r} has the classes {names}, the others {classes}; "
                                    "datasets trained together must have the same classes")
        classes = names
        samples += found
        files[source.name] = len(found)
    assert classes is not None
    return samples, classes, files


def scan_additions(sources: list[Source], classes: list[str]) -> tuple[list[Sample], dict[str, bool | None]]:
    """The datasets' reviewed additions as `train` samples, and whether each (by MD5) changed the model's label."""
    samples: list[Sample] = []
    relabelled: dict[str, bool | None] = {}
    for source in sources:
        for a in source.additions:
            if a.label not in classes:
                raise TrainingDataError(f"a reviewed image added to the dataset {source.name!r} is labelled "
                                        f"{a.label!r}, not one of its classes {classes}")
            if not a.file.is_file():
                raise TrainingDataError(f"a reviewed image added to the dataset {source.name!r} is missing from "
                                        f"storage: {a.file}")
            sample = Sample(a.file, "train", a.label, md5_file(a.file))
            samples.append(sample)
            relabelled[sample.md5] = a.relabelled
    return samples, relabelled


def load_locked(path: str | Path | None) -> dict[str, list[str]]:
    """The locked images of a --locked file: {md5: [8 perceptual hashes, hex]} over every dataset listed."""
    if not path:
        return {}
    locked: dict[str, list[str]] = {}
    for item in json.loads(Path(path).read_text()):
        hashes = json.loads(Path(item["hashes"]).read_text())
        locked.update(hashes if isinstance(hashes, dict) else {})
    return locked


def locked_out(images: dict[str, Image.Image], locked: dict[str, list[str]]) -> dict[str, str]:
    """The training images (MD5 -> decoded) that are locked: {md5: "exact" | "near"}."""
    out = {m: "exact" for m in images if m in locked}
    rest = [m for m in sorted(images) if m not in out]
    if not rest or not locked:
        return out
    views = np.stack([dihedral_hashes(images[m]) for m in rest])
    near = near_mask(views, base_hashes(locked))
    out.update({m: "near" for m, is_near in zip(rest, near, strict=True) if is_near})
    return out


def check_classes(samples: list[Sample], names: list[str]) -> None:
    """Refuse training data that holds fewer than two classes, naming the datasets."""
    labels = Counter(s.label for s in samples)
    if len(labels) >= 2:
        return
    what = f"the dataset {names[0]!r}" if len(names) == 1 else "the datasets " + ", ".join(map(repr, names))
    if not labels:
        raise TrainingDataError(f"{what} left no image to train on once the locked evaluation images were left out")
    raise TrainingDataError(f"{what} {'has' if len(names) == 1 else 'have'} only one class "
                            f"({next(iter(labels))!r}); training needs images of both classes")


def locked_summary(excluded: dict[str, str]) -> dict[str, Any]:
    """How many distinct images were left out because a locked evaluation dataset holds them."""
    kinds = Counter(excluded.values())
    return {"total": len(excluded), "exact": kinds["exact"], "near": kinds["near"]}
