"""Unpack a labelled dataset zip into storage, member by member, under the rules of the image uploads.

The zip's folders carry the labels, so its relative paths are kept (through `clean_path`, and only inside the
dataset's folder); a zip whose layout is neither ROOT/{train,val,test}/<class>/... nor ROOT/<class>/... is
refused before anything is written, and a refused zip leaves nothing in storage.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from fracture.archive import ArchiveRefused, Member, Prefixed, Refused, ZipReader
from fracture.config import Settings
from fracture.storage import Storage

SPLITS = ("train", "val", "test")
# A dataset's fracture boxes, beside its class or split folders (trainer.box_supervision reads them).
BOXES_FILE = "boxes.csv"
MAX_BOXES_BYTES = 16 * 1024 * 1024
# The files a dataset is made of (the trainer's scan reads the same suffixes); others (a README) are skipped.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
LAYOUT_HELP = ("put the images in one folder per class (fractured/, not fractured/) or in train/, val/ and test/ "
               "folders that each hold the class folders")


class DatasetZipRefused(ValueError):
    """The zip cannot become a dataset; `status` is the HTTP status to answer with, the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def zip_layout(paths: list[str]) -> tuple[str, str]:
    """("splits" or "flat", the folder prefix to drop) for the members' relative paths; DatasetZipRefused if neither.

    A zip made by compressing the dataset's folder has that folder on top of every path: it is dropped.
    """
    if not paths:
        raise DatasetZipRefused("the zip holds no images")
    tops = {p.split("/")[0] for p in paths}
    if len(tops) == 1 and all(p.count("/") >= 2 for p in paths) and tops.isdisjoint(SPLITS):
        top = tops.pop()
        try:
            return _layout([p.split("/", 1)[1] for p in paths]), f"{top}/"
        except DatasetZipRefused:
            pass
    return _layout(paths), ""


def _layout(paths: list[str]) -> str:
    loose = [p for p in paths if "/" not in p]
    if loose:
        raise DatasetZipRefused(f"the zip's layout is not supported: {loose[0]!r} is not in a class folder; "
                                f"{LAYOUT_HELP}")
    tops = {p.split("/")[0] for p in paths}
    if tops & set(SPLITS):
        if not tops <= set(SPLITS):
            raise DatasetZipRefused(f"the zip's layout is not supported: it mixes split folders with "
                                    f"{sorted(tops - set(SPLITS))}; {LAYOUT_HELP}")
        shallow = [p for p in paths if p.count("/") < 2]
        if shallow:
            raise DatasetZipRefused(f"the zip's layout is not supported: {shallow[0]!r} is not in a class folder "
                                    f"of its split; {LAYOUT_HELP}")
        layout, classes = "splits", {p.split("/")[1] for p in paths}
    else:
        layout, classes = "flat", tops
    if len(classes) != 2:
        raise DatasetZipRefused(f"the zip's layout is not supported: it has {len(classes)} class folder(s) "
                                f"({', '.join(sorted(classes))}), not two; {LAYOUT_HELP}")
    return layout


def _target(folder: Path, rel: str) -> Path:
    """The file for a member's relative path, which must stay inside the dataset's folder."""
    dest = (folder / PurePosixPath(rel)).resolve()
    if not dest.is_relative_to(folder) or dest == folder:
        raise DatasetZipRefused(f"{rel}: refused: the path leaves the dataset's folder")
    return dest


def _write(dest: Path, src: Prefixed | IO[bytes], chunk: int = 1 << 20) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as out:
            while block := src.read(chunk):
                out.write(block)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def unpack_dataset_zip(storage: Storage, settings: Settings, stream: IO[bytes]) -> tuple[Path, str, int]:
    """Unpack a dataset zip into a new storage folder: (its folder, its layout, files written).

    Every member must pass the image uploads' rules (names, links, encryption, ratio, caps, content); any
    refusal refuses the whole zip (DatasetZipRefused, 413 for the caps) and removes what was written.
    """
    reader = ZipReader(settings.max_zip_members, settings.max_zip_total_bytes, settings.max_zip_ratio)
    try:
        archive, members, _skipped = reader.open(stream)
    except Refused as exc:
        raise DatasetZipRefused(str(exc)) from exc
    except ArchiveRefused as exc:
        raise DatasetZipRefused(str(exc), 413) from exc
    prefix = f"dataset-files/{uuid.uuid4().hex}"
    with archive:
        for member in members:
            if member.refusal is not None:
                raise DatasetZipRefused(f"{member.info.orig_filename!r}: {member.refusal}")
        images = [m for m in members if PurePosixPath(m.path).suffix.lower() in IMAGE_SUFFIXES]
        layout, drop = zip_layout([m.path for m in images])
        folder = storage.path(prefix)
        try:
            for member in images:
                _extract(reader, archive, member, _target(folder, member.path[len(drop):]))
            boxes = [m for m in members if m.path == drop + BOXES_FILE]
            if boxes:
                _extract_boxes(archive, boxes[0], folder / BOXES_FILE)
        except BaseException:
            storage.delete_prefix(prefix)
            raise
    return folder, layout, len(images)


def _extract_boxes(archive: zipfile.ZipFile, member: Member, dest: Path) -> None:
    """Keep the dataset's fracture boxes (a CSV beside its class or split folders, at most MAX_BOXES_BYTES of
    UTF-8 text): the trainings with a box weight read it (trainer.box_supervision checks each row then)."""
    if member.refusal is not None:
        raise DatasetZipRefused(f"{member.path}: {member.refusal}")
    try:
        with archive.open(member.info) as src:
            data = src.read(MAX_BOXES_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DatasetZipRefused(f"{member.path}: the file is damaged ({exc})") from exc
    if len(data) > MAX_BOXES_BYTES:
        raise DatasetZipRefused(f"{member.path}: fracture boxes take at most {MAX_BOXES_BYTES} bytes", 413)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetZipRefused(f"{member.path}: fracture boxes are a CSV in UTF-8 text") from None
    _write(dest, io.BytesIO(data))


def _extract(reader: ZipReader, archive: zipfile.ZipFile, member: Member, dest: Path) -> None:
    try:
        with reader.read(archive, member) as src:
            _write(dest, src)
    except Refused as exc:
        raise DatasetZipRefused(f"{member.path}: {exc}") from exc
    except ArchiveRefused as exc:
        raise DatasetZipRefused(str(exc), 413) from exc
