"""Validate a registered dataset: layout, counts, undecodable files, the audit, duplicates shared with others.

What it finds lands through fracture.datasets (ready with its report, or invalid with one readable sentence);
its hashes and a few thumbnails per class go to storage under datasets/<id>/.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from fracture import datasets
from fracture.config import Settings
from fracture.db import session_scope
from fracture.image_hashes import as_hex, base_hashes, from_hex, near_mask
from fracture.ml.preprocess import ImageError, decode
from fracture.models import Dataset
from fracture.storage import Storage
from trainer.audit import AuditReport, audit, decode_for_audit, dihedral_hashes
from trainer.dataset_scan import SPLITS, Sample, detect_layout, fingerprint, scan
from trainer.heartbeat import beating

THUMBNAILS_PER_CLASS = 4
THUMBNAIL_SIZE = 128
MAX_LISTED = 50  # undecodable files listed in the report (all are counted)
log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """A dataset read and audited: its samples, classes, decoded images (or errors) and audit report."""

    samples: list[Sample]
    classes: list[str]
    decoded: dict[str, Image.Image | str]
    report: AuditReport


def inspect(root: Path, members: set[str] | None) -> Inspection:
    """Scan, decode (small, for hashing) and audit a dataset's files."""
    samples, classes = scan(root, members)
    first: dict[str, Path] = {}
    for s in samples:
        first.setdefault(s.md5, s.path)
    decoded = {md5: decode_for_audit(path) for md5, path in first.items()}
    return Inspection(samples, classes, decoded, audit(samples, decoded))


def counts_of(samples: list[Sample], classes: list[str]) -> dict[str, dict[str, int]]:
    """Files per split and class: {split: {class: n}}, for the splits present."""
    out = {split: dict.fromkeys(classes, 0) for split in SPLITS if any(s.split == split for s in samples)}
    for s in samples:
        out[s.split][s.label] += 1
    return out


def hashes_of(found: Inspection) -> dict[str, list[str]]:
    """{md5: [8 perceptual hashes under rotations/flips, hex]} of every decodable image."""
    return {md5: as_hex(dihedral_hashes(im))
            for md5, im in sorted(found.decoded.items()) if not isinstance(im, str)}


def shared_with(mine: dict[str, list[str]], md5s: set[str], theirs: dict[str, list[str]]) -> dict[str, int]:
    """How many of my distinct images have a byte-identical copy, or else a near duplicate, in another dataset."""
    exact = md5s & set(theirs)
    rest = [m for m in sorted(mine) if m not in exact]
    near = int(near_mask(from_hex([mine[m] for m in rest]), base_hashes(theirs)).sum()) if rest and theirs else 0
    return {"exact": len(exact), "near": near}


def write_thumbnails(storage: Storage, dataset_id: int, found: Inspection) -> dict[str, list[dict[str, str]]]:
    """A few small PNGs per class (decodable files, in path order): {class: [{"key", "file"}]}."""
    out: dict[str, list[dict[str, str]]] = {}
    for index, label in enumerate(found.classes):
        out[label] = []
        for s in sorted((s for s in found.samples if s.label == label), key=lambda s: str(s.path)):
            if len(out[label]) >= THUMBNAILS_PER_CLASS:
                break
            if isinstance(found.decoded.get(s.md5), str):
                continue
            try:
                image = decode(s.path, THUMBNAIL_SIZE)
            except ImageError:
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG", optimize=True)
            key = f"{datasets.files_prefix(dataset_id)}/thumbs/{index}-{len(out[label])}.png"
            storage.write_bytes(key, buf.getvalue())
            out[label].append({"key": key, "file": s.rel})
    return out


def report_of(found: Inspection, shared: list[dict[str, Any]]) -> dict[str, Any]:
    """The report kept on the dataset: the audit's, with the leakage verdict and the shared duplicates."""
    report = found.report.to_dict()
    undecodable = report["undecodable"]
    assert isinstance(undecodable, list)
    report.update(
        undecodable=undecodable[:MAX_LISTED], undecodable_count=len(undecodable), leakage=found.report.leaks(),
        shared_duplicates=shared,
    )
    return report


def validate_dataset(settings: Settings, dataset_id: int) -> str:
    """Validate dataset `dataset_id` and record the outcome on it; return its new status."""
    with session_scope(settings.database_url) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            return "missing"
        if datasets.start_validation(session, dataset_id) is None:
            return str(dataset.status)  # it ended meanwhile (a redelivered task, or the reaper failed it)
        root, members = Path(dataset.root), datasets.member_paths(dataset)
        others = [(d.id, d.name) for d in datasets.other_ready(session, dataset)]
    with beating(settings, lambda s: datasets.beat_validation(s, dataset_id)):
        return _validate(settings, dataset_id, root, members, others)


def _validate(settings: Settings, dataset_id: int, root: Path, members: set[str] | None,
              others: list[tuple[int, str]]) -> str:
    """Read and audit the dataset, then record it ready with its report, or invalid with the reason."""
    storage = Storage(settings.storage_dir)
    try:
        found = inspect(root, members)
        if all(isinstance(v, str) for v in found.decoded.values()):
            raise ValueError(f"none of its {len(found.samples)} files could be decoded as an image")
        hashes = hashes_of(found)
        storage.write_bytes(datasets.hashes_key(dataset_id), json.dumps(hashes).encode())
        md5s = {s.md5 for s in found.samples}
        shared = []
        for other_id, other_name in others:
            theirs = _load_hashes(storage, other_id)
            if theirs is not None:
                shared.append({"dataset_id": other_id, "name": other_name, **shared_with(hashes, md5s, theirs)})
        thumbnails = write_thumbnails(storage, dataset_id, found)
        layout = detect_layout(root)
        counts = counts_of(found.samples, found.classes)
        report = report_of(found, shared)
    except Exception as exc:  # noqa: BLE001  (any failure is the dataset's status, with the reason shown)
        log.exception("validation of dataset %s failed", dataset_id)
        with session_scope(settings.database_url) as session:
            datasets.mark_invalid(session, dataset_id, _sentence(exc))
        return "invalid"
    with session_scope(settings.database_url) as session:
        datasets.record_validation(session, dataset_id, layout, counts, report, thumbnails, fingerprint(found.samples))
    return "ready"


def _load_hashes(storage: Storage, dataset_id: int) -> dict[str, list[str]] | None:
    key = datasets.hashes_key(dataset_id)
    if not storage.exists(key):
        return None
    data = json.loads(storage.read_bytes(key))
    return data if isinstance(data, dict) else None


def _sentence(exc: BaseException) -> str:
    """One readable sentence for the page: the error's own message, which our code writes as one."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError) and exc.filename:
        text = f"cannot read {exc.filename}: {exc.strerror}"
    return f"The dataset could not be validated: {text}."
