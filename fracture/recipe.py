"""The shipped release's training recipe: the defaults of a run's fields (checked in fracture.schedule_params).

The trainer's options take their defaults from RECIPE, so a run that leaves a field out trains the recipe of the
shipped model (fracture/release/README.md), and the training page shows the same defaults.
"""

from __future__ import annotations

from typing import Any

# Test-time views whose logits are averaged. "dihedral" is the 8 rotations and mirrorings the training
# augmentation draws from: averaging over all of them makes a prediction exactly the same for a rotated or
# mirrored upload of the same X-ray, and measured on val it raised ROC-AUC (0.9972 -> 0.9986, release model).
# "two-mirrors" is two of the eight (the left-right mirror and the mirror about the anti-diagonal): a quarter of the
# compute, chosen among the 28 pairs by val ROC-AUC for the release's weights (fracture/release/cheaper.md); unlike
# "dihedral" it does not give a rotated or mirrored upload exactly the same answer.
# Here, not in fracture.ml.preprocess, so that the web checks a recipe without importing torch.
VIEWS = ("identity", "dihedral", "two-mirrors")
# Precisions a checkpoint may be served in on the CPU ("bfloat16": autocast, as on CUDA, which always uses it).
PRECISIONS = ("float32", "bfloat16")
# Per-image intensity normalisations of fracture.ml.preprocess (named here for the same reason).
INTENSITIES = ("none", "equalize", "equalize-full")
# Per-image framing of fracture.ml.preprocess: "trim" crops the uniform black or white bands at the edges (a wider
# collimation, an export's padding) before the network, so the same X-ray framed differently gives the same input.
FRAMINGS = ("none", "trim")
# Training augmentations of trainer.augmentation.TrainAugment. "acquisition-lossy" draws the same family as
# "acquisition" with the changes that lose information (clipping contrast and windows, a coarser resolution) twice as
# often and the resolution down to a fifth (trainer.acquisition.random_acquisition_geometry).
AUGMENTATIONS = ("light", "strong", "acquisition", "acquisition-lossy")
# FracNet's output stride (fracture.ml.net.ModelArgs): its last block's map, which the heatmap shows and the box
# loss teaches, is the input's side over this ("32": 4x4 at 128 px; "16": 8x8, 13% more serving time; "8": 16x16,
# about twice the serving time of "16", measured on 2 CPU cores). Words, as a form sends them; the trainer takes the
# number.
OUTPUT_STRIDES = ("32", "16", "8")
# How FracNet's logit pools its class-activation map (fracture.ml.net.ModelArgs): "mean" (the global average) or
# "lse" (log-mean-exp over the map's cells: the strongest cells carry the score, as a small fracture should).
POOLINGS = ("mean", "lse")
# The weight of the fracture boxes' loss (trainer.box_supervision), the values measured on the two sources
# (fracture/release/robustness.md): "0" trains without boxes; any other needs a boxes.csv in a dataset's folder.
BOX_WEIGHTS = ("0", "0.2", "0.5", "1")

# Recipe fields a schedule or a run may set: (smallest, largest) or the allowed words (checked in
# fracture.schedule_params; here so that the command line builds its options without importing the database).
INT_FIELDS: dict[str, tuple[int, int]] = {"epochs": (1, 1000), "width": (4, 256), "image_size": (32, 1024),
                                          "seed": (0, 2**31 - 1)}
WORD_FIELDS: dict[str, tuple[str, ...]] = {"views": VIEWS, "augment": AUGMENTATIONS, "intensity": INTENSITIES,
                                           "framing": FRAMINGS, "output_stride": OUTPUT_STRIDES,
                                           "pooling": POOLINGS, "box_weight": BOX_WEIGHTS}
# The peak learning rate of the one-cycle schedule: the default is a run's from random weights. A run that starts from
# a registered version's weights (`start_from`) fine-tunes them; the candidates shipped in fracture/release/ were
# fine-tuned at 2e-4 to 5e-4, a tenth to a quarter of it.
# `interpolate` (WiSE-FT, Wortsman et al. 2022): a fine-tune keeps this share of its selected weights and takes the
# rest from the version it started from (1: none of them). Measured on the two sources: two-site-11 blended 0.85 with
# site-1, the model it was fine-tuned from, points into a box more often than either (fracture/release/robustness.md).
FLOAT_FIELDS: dict[str, tuple[float, float]] = {"lr": (1e-5, 1e-1), "interpolate": (0.05, 1.0)}
RECIPE_FIELDS = (*INT_FIELDS, *WORD_FIELDS, *FLOAT_FIELDS)

RECIPE: dict[str, Any] = {"epochs": 80, "width": 24, "image_size": 128, "views": "dihedral", "seed": 0,
                          "augment": "light", "intensity": "none", "framing": "none",
                          "output_stride": "32", "pooling": "mean", "box_weight": "0", "lr": 2e-3,
                          "interpolate": 1.0}


def recipe_of(params: dict[str, Any]) -> dict[str, Any]:
    """The full recipe of a run: its params' recipe fields over the defaults."""
    return {key: params.get(key, default) if params.get(key) is not None else default
            for key, default in RECIPE.items()}


def draws_acquisition(augment: str) -> bool:
    """Whether an augmentation draws trainer.acquisition's changes (and so selects, and fits its detector, on
    acquisition-changed copies too)."""
    return augment.startswith("acquisition")
