"""Command-line entry points of the trainer (`fracture train`, `fracture audit`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def train(argv: tuple[str, ...]) -> None:
    """Train and evaluate the CNN (see `fracture train --help`)."""
    from trainer.train import get_args_parser, main

    parser = get_args_parser()
    parser.prog = "fracture train"
    args = parser.parse_args(list(argv))
    args.argv = list(argv)
    summary = main(args)
    _echo_figures(summary)


def _echo_figures(summary: dict[str, Any]) -> None:
    """One line of figures per split, then the checkpoint written."""
    for split in ("train", "val", "test"):
        if split in summary["metrics"]:
            m = summary["metrics"][split]
            flagged = f" flagged out of distribution {m['ood_flagged']:.3f}" if "ood_flagged" in m else ""
            click.echo(f"{split:5s} acc {m['accuracy']:.4f} sens {m['sensitivity']:.4f} spec {m['specificity']:.4f} "
                       f"auc {m['roc_auc']:.4f}{flagged} (n={m['n']})")
    click.echo(f"checkpoint: {summary['checkpoint']}")


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def recalibrate(argv: tuple[str, ...]) -> None:
    """Choose a checkpoint's threshold again and fit its out-of-distribution detector, on its own data."""
    from trainer.recalibrate import get_args
    from trainer.recalibrate import recalibrate as run

    args = get_args().parse_args(list(argv))
    summary = run(args.model, args.out, args.data, args.data_spec, args.min_sensitivity, args.min_specificity,
                  locked=args.locked, acquisition=args.ood_acquisition)
    if args.curves:
        import numpy as np

        np.savez(args.curves, **{f"{split}_{name}": v for split, (y, p) in summary["curves"].items()
                                 for name, v in (("y", y), ("prob", p))})
    click.echo(f"threshold {summary['previous_threshold']} -> {summary['threshold']:.4f}")
    _echo_figures(summary)


@click.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def audit(root: str, as_json: bool) -> None:
    """Find exact and near duplicates within and across splits, broken files, class balance."""
    from trainer.audit import audit as run_audit
    from trainer.audit import decode_for_audit
    from trainer.dataset_scan import scan

    samples, _ = scan(root)
    paths = {s.md5: s.path for s in samples}
    decoded = {m: decode_for_audit(p) for m, p in paths.items()}
    report = run_audit(samples, decoded)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
    sys.exit(0)


def commands() -> list[click.Command]:
    """The trainer's click commands, added to the `fracture` group by launcher.cli."""
    return [train, audit, recalibrate]
