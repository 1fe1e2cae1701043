"""The one near-duplicate matcher (fracture.image_hashes) on real X-rays: rotated and flipped copies match,
other pictures do not, and each caller's view of it (near_any, near_mask, the audit's pairs) agrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fracture.image_hashes import (
    NEAR_DISTANCE,
    as_hex,
    base_hashes,
    dihedral_hashes,
    from_hex,
    near_any,
    near_mask,
    view_distances,
)
from trainer.audit import near_pairs


def _gray(path: Path) -> Image.Image:
    return Image.open(path).convert("L").resize((256, 256))


def test_rotated_and_flipped_copies_match_other_pictures_do_not(sample_images: list[Path]) -> None:
    one, others = _gray(sample_images[0]), [_gray(p) for p in sample_images[1:6]]
    copies = [one.rotate(90, expand=True), ImageOps.mirror(one), one.rotate(180)]
    theirs = {f"md5-{i}": as_hex(dihedral_hashes(im)) for i, im in enumerate([one])}
    views = np.stack([dihedral_hashes(im) for im in [*copies, *others]])

    mask = near_mask(views, base_hashes(theirs))
    brute = [min(bin(int(v) ^ int(theirs["md5-0"][0], 16)).count("1") for v in row) <= NEAR_DISTANCE
             for row in views]
    assert mask.tolist() == brute
    assert mask[: len(copies)].all() and not mask[len(copies):].any()
    assert [near_any(v, theirs) for v in views] == mask.tolist()
    assert not near_any(views[0], {})
    assert near_mask(views, np.zeros(0, np.uint64)).tolist() == [False] * len(views)
    assert (from_hex(list(theirs.values())) == dihedral_hashes(one)[None, :]).all()


def test_the_audits_pairs_use_the_same_distances(sample_images: list[Path]) -> None:
    images = [_gray(p) for p in sample_images[:4]]
    images.append(ImageOps.flip(images[0]))
    hashes = np.stack([dihedral_hashes(im) for im in images])
    pairs = near_pairs(hashes)
    assert (0, 4, int(view_distances(hashes[4:5], hashes[0:1, 0])[0, 0])) in pairs
    d = view_distances(hashes, hashes[:, 0])
    assert {(i, j) for i, j, _ in pairs} == {(i, j) for i in range(5) for j in range(i + 1, 5)
                                             if d[j, i] <= NEAR_DISTANCE}
