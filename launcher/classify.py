"""`fracture classify`: classify files, folders and zips in this process and write one CSV row per file."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fracture.config import Settings
from fracture.jobs import csv_row, result_columns

if TYPE_CHECKING:
    from fracture.ml.inference import Predictor
    from fracture.models import ModelVersion

# Blocks bound memory when zips are read into it; within a block, batches run on the model.
BLOCK = 256


class ModelMissing(Exception):
    """No checkpoint to classify with."""


def _installation_exists(settings: Settings) -> bool:
    """Whether there is an installation to take the active model from (never create one for a classify run)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        return Path(url.split("///", 1)[-1]).is_file()
    return True


def default_model(settings: Settings) -> tuple[Path | ModelVersion, str]:
    """The model to use without --model: the active version of an existing installation (loaded, as the workers
    load it, only if its file is the one registered), else the release checkpoint."""
    from fracture.registry import SEED_VERSION

    if _installation_exists(settings):
        from fracture.db import session_scope
        from fracture.migrate import upgrade
        from fracture.registry import active_version, ensure_seed_model

        upgrade(settings.database_url)
        with session_scope(settings.database_url) as session:
            ensure_seed_model(session, settings)
            version = active_version(session)
            if version is not None:
                return version, version.name
    elif settings.seed_model is not None and settings.seed_model.is_file():
        return settings.seed_model, SEED_VERSION
    raise ModelMissing("no trained model is active in this installation: train one (`fracture train`) or pass --model")


def _load(checkpoint: Path | ModelVersion, settings: Settings, batch_size: int | None) -> Predictor:
    """A checkpoint file as given (--model), or a registered version through the registry's SHA-256 check."""
    from fracture.ml.checkpoint import CheckpointError
    from fracture.ml.inference import Predictor

    try:
        if isinstance(checkpoint, Path):
            return Predictor.from_file(
                checkpoint, batch_size=batch_size or settings.batch_size, max_pixels=settings.max_image_pixels,
                decoder=settings.decoder, decode_threads=settings.decode_threads,
            )
        from fracture.registry import load_predictor

        predictor = load_predictor(settings, checkpoint)
    except CheckpointError as e:
        raise ModelMissing(str(e)) from None
    predictor.batch_size = batch_size or predictor.batch_size
    return predictor


def classify_files(
    paths: list[Path], out: Path, checkpoint: Path | ModelVersion, version_name: str, settings: Settings,
    batch_size: int | None = None,
) -> tuple[int, int, int]:
    """Write a CSV row for every file under `paths` (the CSV itself and the data folder excluded).

    `checkpoint` is a file, or a registered version (see default_model). Returns (files, errors, images the model's
    detector flagged as unlike its training data).
    """
    from tqdm import tqdm

    from fracture.dicom import read_identifiers
    from fracture.inputs import ZipBudget, collect

    predictor = _load(checkpoint, settings, batch_size)
    # Never read what this command writes, nor an installation's data folder that happens to lie below.
    items = collect(paths, settings, exclude=(out, settings.home))
    budget = ZipBudget(settings)
    errors = flagged = 0
    columns = result_columns(settings.show_patient_identifiers)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f, tqdm(total=len(items), unit="img", file=sys.stderr) as bar:
        writer = csv.writer(f)
        writer.writerow(columns)
        for start in range(0, len(items), BLOCK):
            part = items[start : start + BLOCK]
            outcome: list[dict[str, object]] = [{} for _ in part]
            sources: list[object] = []
            where: list[int] = []
            for i, item in enumerate(part):
                source: object = item.error or item.path or (budget.read(item) if item.member else "no data")
                if item.error or isinstance(source, str):
                    outcome[i] = {"error": item.error or str(source)}
                else:
                    sources.append(source)
                    where.append(i)
                    ids = read_identifiers(source, settings.show_patient_identifiers)  # type: ignore[arg-type]
                    outcome[i] = dict(ids.as_dict()) if ids else {}
            for pred in predictor.predict(sources):  # type: ignore[arg-type]
                outcome[where[pred.index]] |= {
                    "prediction": pred.label, "probability": pred.probability, "in_distribution": pred.in_distribution,
                    "ood_score": pred.ood_score, "error": pred.error,
                }
            for item, result in zip(part, outcome, strict=True):
                errors += result.get("error") is not None
                flagged += result.get("in_distribution") is False
                writer.writerow(csv_row({**result, "path": item.name, "model_version": version_name}, columns))
            bar.update(len(part))
    budget.close()
    return len(items), errors, flagged
