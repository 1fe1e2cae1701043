"""The datasets, recipe and starting weights a training or a schedule names (its params): checked, with one-sentence
errors.

Only READY training datasets may be named: evaluation datasets are locked, never trained on. `start_from` names a
registered model version (name or id) whose weights the run fine-tunes instead of starting from random ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from fracture.models import MAX_ROW_ID, Dataset, DatasetRole, DatasetStatus
from fracture.recipe import FLOAT_FIELDS, INT_FIELDS, WORD_FIELDS
from fracture.registry import find_version


class RecipeError(ValueError):
    """The datasets or recipe asked for cannot be used; the message says why in one sentence."""


def check_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe fields present in `data` (empty ones left out), checked; RecipeError otherwise."""
    recipe: dict[str, Any] = {}
    for name, (low, high) in INT_FIELDS.items():
        value = data.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise RecipeError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        recipe[name] = value
    for name, words in WORD_FIELDS.items():
        value = data.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):  # a number field sent as JSON's number
            value = f"{value:g}"
        if value not in words:
            raise RecipeError(f"{name} must be one of {', '.join(words)}, not {value!r}")
        recipe[name] = value
    for name, (low_f, high_f) in FLOAT_FIELDS.items():
        value = data.get(name)
        if value is None or value == "":
            continue
        number = _number(value)
        if number is None or not low_f <= number <= high_f:
            raise RecipeError(f"{name} must be a number from {low_f:g} to {high_f:g}, not {value!r}")
        recipe[name] = number
    return recipe


def _number(value: object) -> float | None:
    """A JSON number or a form's text as a float; None for anything else (a bool, text that is not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def check_dataset_ids(session: Session, ids: object) -> list[int]:
    """The ids of one or more READY training datasets, sorted; RecipeError for any other."""
    if not isinstance(ids, list) or not ids:
        raise RecipeError("name at least one training dataset (dataset_ids: a list of dataset ids)")
    checked: set[int] = set()
    for raw in ids:
        value = int(raw) if isinstance(raw, str) and raw.strip().isdecimal() else raw
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecipeError(f"a dataset id is a whole number, not {raw!r}")
        dataset = session.get(Dataset, value) if 0 < value <= MAX_ROW_ID else None
        if dataset is None:
            raise RecipeError(f"there is no dataset with id {value}")
        if dataset.role == DatasetRole.EVALUATION:
            raise RecipeError(f"dataset {dataset.name!r} is an evaluation dataset: it is locked, never trained on")
        if dataset.status != DatasetStatus.READY:
            raise RecipeError(f"dataset {dataset.name!r} is not ready ({dataset.status}): validate it first")
        checked.add(value)
    return sorted(checked)


def check_start_from(session: Session, ref: object) -> int | None:
    """The id of the model version `ref` names (its name or id; None or "" for none); RecipeError for no version."""
    if ref is None or ref == "":
        return None
    version = find_version(session, ref) if isinstance(ref, str | int) else None
    if version is None:
        raise RecipeError(f"start_from names no model version: {ref!r} (give a version's name or id)")
    return version.id


def check_params(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """A training's params from `data`: {"dataset_ids": [...], recipe fields..., "start_from"?: version id};
    RecipeError otherwise."""
    params = {"dataset_ids": check_dataset_ids(session, data.get("dataset_ids")), **check_recipe(data)}
    start_from = check_start_from(session, data.get("start_from"))
    if start_from is not None:
        params["start_from"] = start_from
    elif params.get("interpolate", 1.0) < 1.0:
        raise RecipeError("interpolate below 1 needs start_from: it blends the fine-tuned weights with those of the "
                          "version the run starts from")
    return params
