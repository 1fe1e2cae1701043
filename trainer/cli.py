"""Command-line entry points of the trainer (`fracture train`, `fracture audit`)."""

from __future__ import annotations

import click


def commands() -> list[click.Command]:
    """The trainer's click commands, added to the `fracture` group by fracture.cli."""
    return []
