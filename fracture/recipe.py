"""The shipped release's training recipe: the defaults of a run's fields (checked in fracture.schedule_params).

The trainer's options take their defaults from RECIPE, so a run that leaves a field out trains the recipe of the
shipped model (fracture/release/README.md), and the training page shows the same defaults.
"""

from __future__ import annotations

from typing import Any

RECIPE: dict[str, Any] = {"epochs": 80, "width": 24, "image_size": 128, "views": "dihedral", "seed": 0,
                          "augment": "light"}


def recipe_of(params: dict[str, Any]) -> dict[str, Any]:
    """The full recipe of a run: its params' recipe fields over the defaults."""
    return {key: params.get(key, default) if params.get(key) is not None else default
            for key, default in RECIPE.items()}
