"""What a TrainingRun's folder in storage holds: its data spec, the locked images' list, its log.

The folder is `runs/<id>/`: the trainer's checkpoints go there while it runs, the log (progress lines, and the
traceback of a failure) stays there for the page.
"""

from __future__ import annotations

import json
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fracture import dataset_additions, datasets
from fracture.config import Settings
from fracture.dataset_files import BOXES_FILE
from fracture.db import session_scope
from fracture.models import Dataset, DatasetRole, DatasetStatus
from fracture.schedule_params import RecipeError, check_dataset_ids
from fracture.storage import Storage
from trainer.box_supervision import collect_boxes
from trainer.training_sources import TrainingDataError

KEEP = {"train.log"}  # what a cancelled run's folder keeps


def data_argv(settings: Settings, params: dict[str, Any], out: Path) -> list[str]:
    """The trainer's data options for a run: its datasets (or one folder), and the locked images to leave out."""
    storage = Storage(settings.storage_dir)
    out.mkdir(parents=True, exist_ok=True)
    with session_scope(settings.database_url) as s:
        if params.get("dataset_ids"):
            ids = check_dataset_ids(s, list(params["dataset_ids"]))  # again: a dataset may have changed since
            rows = [s.get_one(Dataset, i) for i in ids]
            # A dataset's reviewed additions (fracture.dataset_additions) are trained on with it.
            spec = [{"name": d.name, "root": d.root,
                     "members": sorted(m) if (m := datasets.member_paths(d)) is not None else None,
                     "additions": dataset_additions.spec_of(s, storage, d.id)} for d in rows]
            (out / "data-spec.json").write_text(json.dumps(spec, indent=1))
            argv = ["--data-spec", str(out / "data-spec.json")]
            roots = [(d.name, Path(d.root)) for d in rows]
        else:
            data = params.get("data") or (str(settings.dataset_dir) if settings.dataset_dir else None)
            if not data:
                raise TrainingDataError("no dataset was named: choose one or more training datasets (or set "
                                        "FRACTURE_DATASET)")
            argv = ["--data", str(data)]
            roots = [(Path(data).name, Path(data))]
        locked = [{"name": d.name, "hashes": str(storage.path(datasets.hashes_key(d.id)))}
                  for d in s.scalars(select(Dataset).where(Dataset.role == DatasetRole.EVALUATION,
                                                           Dataset.status == DatasetStatus.READY).order_by(Dataset.id))
                  if storage.exists(datasets.hashes_key(d.id))]
    if locked:
        (out / "locked.json").write_text(json.dumps(locked, indent=1))
        argv += ["--locked", str(out / "locked.json")]
    if float(params.get("box_weight") or 0) > 0:
        argv += boxes_argv(roots, out)
    return argv


def boxes_argv(roots: list[tuple[str, Path]], out: Path) -> list[str]:
    """The trainer's --boxes for a run with a box weight: its datasets' fracture boxes gathered into one file;
    TrainingDataError when none of them has any (a box weight without boxes would train as if it had none)."""
    if not collect_boxes([root for _, root in roots], out / BOXES_FILE):
        names = ", ".join(repr(name) for name, _ in roots)
        raise TrainingDataError(f"a box weight needs fracture boxes, and none of the datasets ({names}) has a "
                                f"{BOXES_FILE} at the root of its folder (md5 or filename, x0, y0, x1, y1)")
    return ["--boxes", str(out / BOXES_FILE)]


class RunLog:
    """Append timestamped lines to a run's log file in storage (flushed at once, so the page sees them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line.rstrip()}\n")

    def exception(self, exc: BaseException) -> None:
        """Write why the run failed in one sentence (the page's headline too), then the traceback under it."""
        self(f"{sentence(exc)}\nthe details, for a bug report:\n" + "".join(traceback.format_exception(exc)))


def sentence(exc: BaseException) -> str:
    """One readable sentence for the page; the traceback goes to the log."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError) and exc.filename:
        text = f"cannot read {exc.filename}: {exc.strerror}"
    elif isinstance(exc, TrainingDataError | RecipeError | ValueError) and str(exc).strip():
        text = str(exc).strip().splitlines()[0][:300]
    else:
        text = f"the trainer stopped on an unexpected error ({type(exc).__name__}); the run's log has the details"
    return f"The training failed: {text.rstrip('.')}."


def clean_folder(out: Path) -> None:
    """Remove what a stopped run wrote (checkpoints, plots, card), keeping its log."""
    if not out.is_dir():
        return
    for path in sorted(out.rglob("*"), reverse=True):  # files before their folders
        if path.relative_to(out).as_posix() in KEEP:
            continue
        if not path.is_dir():
            path.unlink(missing_ok=True)
        elif not any(path.iterdir()):
            path.rmdir()
