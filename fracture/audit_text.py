"""A dataset audit's findings in words, the same on the dataset page, in the model card and on the command line."""

from __future__ import annotations

from collections.abc import Mapping


def duplicates_sentence(report: Mapping[str, object]) -> str:
    """The audit's duplicates in words: how many files have a duplicate, and how many pictures are left.

    "60 files, 60 distinct images, 56 groups of duplicates" read as 56 duplicated pictures; `duplicate_groups`
    counts every group, lone images too. Reports written before `files_with_duplicates` say what they can.
    """
    files, groups = report["files"], report["duplicate_groups"]
    if "files_with_duplicates" not in report:
        return (f"{files} files, {report['distinct_images']} with different bytes; {groups} different pictures once "
                "exact and near duplicates are merged.")
    with_dup, sets = report["files_with_duplicates"], report["duplicate_sets"]
    if not with_dup:
        return f"{files} files, none of them a duplicate of another (exact or near)."
    return (f"{files} files: {with_dup} of them have a duplicate (an exact copy, or a near one: rotated, flipped, "
            f"resized) in {sets} set{'s' if sets != 1 else ''}; {groups} different pictures once duplicates are "
            "merged.")
