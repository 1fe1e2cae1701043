"""`fracture datasets add|list|show`: register a server folder and validate it in this process, list, show."""

from __future__ import annotations

import json

import click

from fracture.config import get_settings


@click.group()
def datasets() -> None:
    """Labelled datasets: server folders under DATASET_ROOTS, validated before use."""


@datasets.command("add")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--name", help="a name to show (default: the folder's name)")
@click.option("--role", type=click.Choice(["training", "evaluation"]), default="training", show_default=True,
              help="evaluation datasets are locked: never trained on")
def add(path: str, name: str | None, role: str) -> None:
    """Register folder PATH (under DATASET_ROOTS) and validate it here; no broker needed."""
    from fracture import audit_log
    from fracture import datasets as state
    from fracture.db import session_scope
    from fracture.migrate import upgrade
    from trainer.dataset_validation import validate_dataset

    settings = get_settings()
    upgrade(settings.database_url)
    try:
        with session_scope(settings.database_url) as session:
            dataset_id = state.register_folder(session, settings, path, name, role, actor=audit_log.CLI).id
    except state.DatasetError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"dataset #{dataset_id} registered; validating...", err=True)
    if validate_dataset(settings, dataset_id) != "ready":
        _show(dataset_id)
        raise click.ClickException(f"dataset #{dataset_id} is invalid (see its error above)")
    _show(dataset_id)


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the datasets as JSON")
def list_datasets(as_json: bool) -> None:
    """List the registered datasets."""
    from sqlalchemy import select

    from fracture import datasets as state
    from fracture.db import session_scope
    from fracture.migrate import upgrade
    from fracture.models import Dataset

    url = get_settings().database_url
    upgrade(url)
    with session_scope(url) as session:
        rows = [state.as_dict(d, with_root=True) for d in session.scalars(select(Dataset).order_by(Dataset.id))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for d in rows:
        files = sum(n for per in d["counts"].values() for n in per.values())
        click.echo(f"#{d['id']}\t{d['name']}\t{d['role']}\t{d['status']}\t{files} files\t{d['error'] or d['root']}")


@datasets.command("show")
@click.argument("dataset_id", type=int)
def show(dataset_id: int) -> None:
    """Print dataset DATASET_ID with its counts and validation report, as JSON."""
    from fracture.migrate import upgrade

    upgrade(get_settings().database_url)
    _show(dataset_id)


def _show(dataset_id: int) -> None:
    from fracture import datasets as state
    from fracture.db import session_scope

    with session_scope(get_settings().database_url) as session:
        try:
            out = state.as_dict(state.get_dataset(session, dataset_id), with_root=True)
        except state.DatasetError as e:
            raise click.ClickException(str(e)) from None
    click.echo(json.dumps(out, indent=2))
