"""Audit a dataset: exact and near duplicates within and across splits, broken files, class balance."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fracture.audit_text import duplicates_sentence
from fracture.image_hashes import NEAR_DISTANCE, dihedral_hashes, view_distances
from fracture.ml.preprocess import ImageError, decode
from trainer.dataset_scan import SPLITS, Sample


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(hashes: np.ndarray, max_distance: int = NEAR_DISTANCE) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) whose hashes match under some rotation/flip within `max_distance` bits."""
    base = hashes[:, 0]
    pairs: list[tuple[int, int, int]] = []
    for i in range(len(base)):
        # distance from image i (as is) to every later image under each of its 8 transforms
        d = view_distances(hashes[i + 1:], base[i : i + 1])[:, 0]
        for j in np.nonzero(d <= max_distance)[0]:
            pairs.append((i, i + 1 + int(j), int(d[j])))
    return pairs


@dataclass
class AuditReport:
    files: int
    distinct: int
    classes: dict[str, dict[str, int]]
    undecodable: list[tuple[str, str]]
    exact_within: dict[str, int]
    exact_across: dict[str, int]
    near_across: dict[str, int]
    groups: int
    label_conflicts: int
    files_with_duplicates: int = 0  # files that have at least one other file as an exact or near duplicate
    duplicate_sets: int = 0  # the groups those files fall in (groups of two or more files)
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    group_of: dict[str, int] = field(default_factory=dict)  # md5 -> group id
    label_of: dict[str, str] = field(default_factory=dict)  # md5 -> label

    def leaks(self) -> bool:
        return any(self.exact_across.values()) or any(self.near_across.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files, "distinct_images": self.distinct, "classes": self.classes,
            "undecodable": [{"file": f, "reason": r} for f, r in self.undecodable],
            "exact_duplicates_within_split": self.exact_within,
            "exact_duplicates_across_splits": self.exact_across,
            "near_duplicates_across_splits": self.near_across,
            "duplicate_groups": self.groups, "groups_with_conflicting_labels": self.label_conflicts,
            "files_with_duplicates": self.files_with_duplicates, "duplicate_sets": self.duplicate_sets,
            "examples": [{"a": a, "b": b, "kind": k} for a, b, k in self.examples],
        }

    def render(self) -> str:
        lines = [duplicates_sentence(self.to_dict())]
        lines.append("Class balance:")
        for split, counts in self.classes.items():
            lines.append(f"  {split:5s} " + "  ".join(f"{k}: {v}" for k, v in counts.items()))
        lines.append("Exact duplicates (same bytes) within a split: "
                     + ", ".join(f"{k} {v}" for k, v in self.exact_within.items()))
        lines.append("Files with a byte-identical twin in another split: "
                     + ", ".join(f"{k} {v}" for k, v in self.exact_across.items()))
        lines.append("Files with a near-duplicate (rotated/flipped/resized) in another split, no exact twin: "
                     + ", ".join(f"{k} {v}" for k, v in self.near_across.items()))
        lines.append(f"Groups whose members carry different labels: {self.label_conflicts}")
        lines.append(f"Undecodable files: {len(self.undecodable)}")
        lines += [f"  {f}: {r}" for f, r in self.undecodable[:10]]
        if self.examples:
            lines.append("Example pairs:")
            lines += [f"  [{k}] {a}  <->  {b}" for a, b, k in self.examples[:12]]
        if self.leaks():
            lines.append("WARNING: the splits leak: scores on val/test as given overstate quality; "
                         "train with --split grouped for honest figures.")
        return "\n".join(lines)


def audit(samples: list[Sample], decoded: dict[str, Image.Image | str],
          max_distance: int = NEAR_DISTANCE) -> AuditReport:
    """Group files by bytes and by perceptual hash; `decoded` maps MD5 to an image or an error."""
    md5s = sorted({s.md5 for s in samples})
    index = {m: i for i, m in enumerate(md5s)}
    by_md5: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_md5[s.md5].append(s)

    ok = [m for m in md5s if not isinstance(decoded[m], str)]
    hashes = np.stack([dihedral_hashes(decoded[m]) for m in ok]) if ok else np.zeros((0, 8), np.uint64)  # type: ignore[arg-type]
    uf = UnionFind(len(md5s))
    near: list[tuple[str, str]] = []
    for i, j, _ in near_pairs(hashes, max_distance):
        uf.union(index[ok[i]], index[ok[j]])
        near.append((ok[i], ok[j]))

    group_of = {m: uf.find(index[m]) for m in md5s}
    members: dict[int, list[str]] = defaultdict(list)
    for m, g in group_of.items():
        members[g].append(m)
    label_of = {m: by_md5[m][0].label for m in md5s}
    conflicts = sum(1 for ms in members.values() if len({label_of[m] for m in ms}) > 1)

    splits_of_md5 = {m: {s.split for s in by_md5[m]} for m in md5s}
    splits_of_group = {g: set().union(*(splits_of_md5[m] for m in ms)) for g, ms in members.items()}
    exact_within: Counter[str] = Counter()
    exact_across: Counter[str] = Counter()
    near_across: Counter[str] = Counter()
    for s in samples:
        same_split = sum(1 for t in by_md5[s.md5] if t.split == s.split)
        if same_split > 1:
            exact_within[s.split] += 1
        if len(splits_of_md5[s.md5]) > 1:
            exact_across[s.split] += 1
        elif len(splits_of_group[group_of[s.md5]]) > 1:
            near_across[s.split] += 1

    examples: list[tuple[str, str, str]] = []
    for m in md5s:
        files = by_md5[m]
        cross = [f for f in files if f.split != files[0].split]
        if cross and len(examples) < 6:
            examples.append((files[0].rel, cross[0].rel, "same bytes"))
    for a, b in near:
        sa, sb = by_md5[a][0], by_md5[b][0]
        if sa.split != sb.split and len(examples) < 12:
            examples.append((sa.rel, sb.rel, "near duplicate"))

    classes = {sp: dict(sorted(Counter(s.label for s in samples if s.split == sp).items())) for sp in SPLITS}
    # `groups` counts every group, a lone image too; these count only the files that do have a duplicate.
    files_per_group = Counter(group_of[s.md5] for s in samples)
    shared = [n for n in files_per_group.values() if n > 1]
    undecodable = sorted((by_md5[m][0].rel, str(decoded[m])) for m in md5s if isinstance(decoded[m], str))
    return AuditReport(
        files=len(samples), distinct=len(md5s), classes=classes, undecodable=undecodable,
        exact_within={sp: exact_within[sp] for sp in SPLITS}, exact_across={sp: exact_across[sp] for sp in SPLITS},
        near_across={sp: near_across[sp] for sp in SPLITS}, groups=len(members), label_conflicts=conflicts,
        examples=examples, group_of=group_of, label_of=label_of, files_with_duplicates=sum(shared),
        duplicate_sets=len(shared),
    )


def decode_for_audit(path: Path, size: int = 64) -> Image.Image | str:
    try:
        return decode(path, size)
    except ImageError as e:
        return str(e)
