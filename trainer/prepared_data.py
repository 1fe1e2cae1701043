"""A run's data in memory: its datasets scanned, decoded once, locked images left out, audited and split."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from fracture.ml.checkpoint import POSITIVE_CLASS
from fracture.ml.preprocess import PreprocessSpec
from fracture.recipe import draws_acquisition
from trainer.audit import AuditReport, audit
from trainer.box_supervision import box_masks_of
from trainer.dataset_scan import SPLITS, fingerprint
from trainer.decoded_images import decode_all
from trainer.train_val_test_split import make_split
from trainer.training_sources import (
    Source,
    check_classes,
    load_locked,
    locked_out,
    locked_summary,
    read_spec,
    scan_additions,
    scan_union,
)


@dataclass
class Prepared:
    """The run's distinct images in memory, their labels and splits, and where they came from."""

    classes: list[str]
    images: torch.Tensor  # (N, 1, S, S) uint8, one row per distinct image
    labels: torch.Tensor  # (N,) float, 1.0 = positive class
    split_index: dict[str, np.ndarray]  # rows of `images` in each split
    report: AuditReport
    fingerprint: str
    paths: dict[str, Path]
    row_md5: list[str]
    files: dict[str, int]  # files per dataset, before the locked images are left out
    locked: dict[str, int]  # distinct images left out because a locked evaluation dataset holds them
    corrections: dict[str, int]  # the datasets' reviewed additions: offered, trained on, relabelled, left out
    box_index: torch.Tensor | None = None  # (N,) row of box_masks for each image's fracture boxes, -1: none
    box_masks: torch.Tensor | None = None  # (K, 1, S, S) uint8, 255 inside a box
    # (N, 1, D, D) uint8, D = SOURCE_SCALE x S: each image as decoded, squashed, not yet equalised, for a recipe
    # that equalises the decoded image ("equalize-full") and draws acquisition changes: a look-up table, window or
    # JPEG acts on these pixels before the equalisation and the resize, as a department's machine does (see
    # trainer.augmentation.AcquisitionChange); None otherwise.
    sources: torch.Tensor | None = None


# The size at which every run's images are hashed for the duplicate audit, the locked images' matching and the
# grouped split: the default input size, so runs of any input size split the same data and seed alike.
AUDIT_SIZE = 128
# The acquisition changes of an "equalize-full" run act on images at this multiple of the input's side: 2 x costs
# about 1 ms an image a draw on one core (4 x: 2.8 ms) and keeps what equalising before the resize is for.
SOURCE_SCALE = 2


def needs_sources(spec: PreprocessSpec, augment: str) -> bool:
    """Whether a run keeps each image's decoded form beside its input (Prepared.sources)."""
    return spec.equalize_decoded and draws_acquisition(augment)


def sources_of(args: argparse.Namespace) -> list[Source]:
    """The datasets of a run: those of --data-spec, or the one folder of --data."""
    if getattr(args, "data_spec", None):
        return read_spec(args.data_spec)
    return [Source(Path(args.data).name, Path(args.data))]


def prepare_data(args: argparse.Namespace, spec: PreprocessSpec, cache_dir: Path | None) -> Prepared:
    """Scan the datasets, decode once, leave out locked images, audit for duplicates, and split by the policy."""
    sources = sources_of(args)
    samples, classes, files = scan_union(sources)
    added, relabelled = scan_additions(sources, classes)
    paths = {s.md5: s.path for s in added} | {s.md5: s.path for s in samples}
    index, images, errors = decode_all(paths, spec, cache_dir)
    decoded = audit_images(paths, spec, cache_dir, index, images, errors)
    # The grouped split below runs over the union: the audit groups copies across datasets by bytes and hash.
    excluded = locked_out({m: im for m, im in decoded.items() if not isinstance(im, str)},
                          load_locked(getattr(args, "locked", None)))
    samples = [s for s in samples if s.md5 not in excluded]
    own = {s.md5 for s in samples}
    offered = {s.md5 for s in added}
    added = [s for s in added if s.md5 not in excluded and s.md5 not in own and s.md5 in index]
    kept = {s.md5 for s in added}
    check_classes(samples + added, [source.name for source in sources])
    report = audit(samples + added, decoded)
    split_seed = args.seed if getattr(args, "split_seed", None) is None else args.split_seed
    # The datasets' own images are split as if nothing had been added (the same val and test as before: the split
    # is drawn from an audit of their own images alone, whose group numbering an addition cannot shift); the
    # reviewed additions then join train, but for any whose duplicate group reaches val or test.
    own_report = audit(samples, decoded) if added else report
    split = make_split(args.split, samples, own_report, split_seed)
    held = {report.group_of[m] for name in ("val", "test") for m in split[name] if m in report.group_of}
    added = [s for s in added if report.group_of[s.md5] not in held]
    split["train"] = sorted(set(split["train"]) | {s.md5 for s in added})
    corrections = {"offered": len(offered), "used": len({s.md5 for s in added}),
                   "relabelled": sum(1 for m in {s.md5 for s in added} if relabelled.get(m))}
    corrections["left_out"] = corrections["offered"] - corrections["used"]
    # Why the left-out ones were (each counted once, by the first reason that holds; only reasons that occur).
    reasons = {"locked": offered & set(excluded), "already_in_data": (offered - set(excluded)) & own,
               "undecodable": offered - set(excluded) - own - set(index), "near_val_test": kept - set(split["train"])}
    corrections |= {why: len(md5s) for why, md5s in reasons.items() if md5s}
    positive = POSITIVE_CLASS if POSITIVE_CLASS in classes else classes[0]
    row_md5 = sorted(index, key=index.__getitem__)
    labels = torch.tensor([1.0 if report.label_of.get(m) == positive else 0.0 for m in row_md5])
    split_index = {}
    for name in SPLITS:
        rows = np.array([index[m] for m in split[name] if m in index], dtype=np.int64)
        if args.dry_run:
            rng = np.random.default_rng(args.seed)
            rows = rng.permutation(rows)[:64]
        split_index[name] = rows
    prepared = Prepared(classes, images, labels, split_index, report, fingerprint(samples + added), paths, row_md5,
                        files, locked_summary(excluded), corrections)
    if needs_sources(spec, getattr(args, "augment", "light")):
        prepared.sources = decoded_sources(paths, row_md5, spec, cache_dir)
    if getattr(args, "boxes", None):
        prepared.box_index, prepared.box_masks = box_masks_of(args.boxes, prepared, spec.image_size)
    return prepared


def audit_images(paths: dict[str, Path], spec: PreprocessSpec, cache_dir: Path | None, index: dict[str, int],
                 images: torch.Tensor, errors: dict[str, str]) -> dict[str, PILImage.Image | str]:
    """Each image as the duplicate audit, the locked images' matching and so the grouped split see it (or why it
    failed to decode): the decoded image at AUDIT_SIZE, never equalised, whatever the recipe. A recipe that
    equalises the decoded image ("equalize-full") gets its inputs equalised already, and near-duplicate hashes of
    those group other images: its split would not be the split of the same data and seed under any other recipe (of
    the first source's 508 test images in such a split, 82 were in the other recipes' test split), and a model
    fine-tuned from one of those would be tested on images it had trained on. The input size moves hashes too (hashed
    at 256 px, the two sources' grouped split went from 4469 / 892 / 891 images to 4459 / 892 / 903, and 2 fewer
    matched a locked image)."""
    audit_spec = replace(spec, intensity="none", image_size=AUDIT_SIZE)
    if spec.equalize_decoded or spec.image_size != AUDIT_SIZE:
        index, images, errors = decode_all(paths, audit_spec, cache_dir)
    decoded: dict[str, PILImage.Image | str] = {m: errors[m] for m in errors}
    for m, i in index.items():
        decoded[m] = PILImage.fromarray(images[i, 0].numpy())
    return decoded


def decoded_sources(paths: dict[str, Path], row_md5: list[str], spec: PreprocessSpec,
                    cache_dir: Path | None) -> torch.Tensor:
    """Prepared.sources: the images of `row_md5`, in that order, decoded at SOURCE_SCALE x the input size."""
    size = spec.image_size * SOURCE_SCALE
    index, images, errors = decode_all({m: paths[m] for m in row_md5}, spec, cache_dir, source_size=size)
    if errors:  # the same files decoded a moment ago at the input size
        raise RuntimeError(f"images that decoded once failed a second time: {sorted(errors)[:3]}")
    return images[[index[m] for m in row_md5]]


def split_sizes(data: Prepared) -> dict[str, int]:
    """Count the distinct images of each split."""
    return {k: len(v) for k, v in data.split_index.items()}
