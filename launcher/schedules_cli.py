"""`fracture schedules list|add|pause|resume|delete`: the retraining schedules the beat fires, from the shell.

The options read into the same request the web's API takes (fracture.schedule_requests checks it), so a schedule
added here is the one the API would have added, refused with the same reasons.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from fracture.config import get_settings
from fracture.recipe import FLOAT_FIELDS, INT_FIELDS, RECIPE, WORD_FIELDS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@contextmanager
def _session() -> Iterator[Session]:
    """A session on the migrated database; a refused request (ScheduleError, RecipeError, LookupError) exits 1 with
    its reason and writes nothing."""
    from fracture.db import session_scope
    from fracture.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    try:
        with session_scope(url) as session:
            yield session
    except (ValueError, LookupError) as e:  # ScheduleError and RecipeError are ValueErrors
        raise click.ClickException(str(e)) from None


@click.group()
def schedules() -> None:
    """Retraining schedules (kept in the database, fired by the beat of `fracture up`)."""


def _recipe_options(command: Any) -> Any:
    """One option per recipe field (--epochs, --augment, ...), checked by the core as the API's fields are."""
    for name in reversed((*INT_FIELDS, *WORD_FIELDS, *FLOAT_FIELDS)):
        if name in INT_FIELDS:
            kind: Any = click.IntRange(*INT_FIELDS[name])
        elif name in FLOAT_FIELDS:
            kind = click.FloatRange(*FLOAT_FIELDS[name])
        else:
            kind = click.Choice(WORD_FIELDS[name])
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind,
                               help=f"the recipe's {name} (default {RECIPE[name]!r})")(command)
    return command


def _weekly(text: str | None) -> dict[str, str] | None:
    """--weekly-at "DAY HH:MM" (or DAY@HH:MM) as the API's {"weekday", "time"}."""
    if text is None:
        return None
    day, _, time = text.replace("@", " ").strip().partition(" ")
    return {"weekday": day, "time": time.strip()}


def _dataset_ids(session: Session, given: tuple[str, ...]) -> list[object]:
    """--dataset values as ids: a number is an id, anything else a dataset's name (which must name exactly one)."""
    from sqlalchemy import select

    from fracture.models import Dataset

    ids: list[object] = []
    for value in given:
        if value.strip().isdecimal():
            ids.append(int(value))
            continue
        found = session.scalars(select(Dataset.id).where(Dataset.name == value)).all()
        if len(found) != 1:
            what = "no dataset" if not found else f"{len(found)} datasets"
            raise click.ClickException(f"there is {what} named {value!r}: give its id (see `fracture datasets list`)")
        ids.append(found[0])
    return ids


@schedules.command("add")
@click.option("--name", help="a name to tell it apart (default 'retrain')")
@click.option("--dataset", "datasets", multiple=True, required=True,
              help="a ready training dataset's id or name (repeat for several)")
@click.option("--every-minutes", type=int, help="due every N minutes")
@click.option("--every-hours", type=int, help="due every N hours")
@click.option("--daily-at", metavar="HH:MM", help="due daily at this time of day")
@click.option("--weekly-at", metavar='"DAY HH:MM"', help="due weekly on DAY (a name or 0=Monday..6) at HH:MM")
@click.option("--cron", metavar='"M H DOM MON DOW"', help="due by a five-field cron expression")
@click.option("--timezone", help="an IANA time zone for the time of day or cron fields (default UTC)")
@click.option("--paused", is_flag=True, help="add it paused (resume it later)")
@click.option("--start-from", help="a model version's name or id: each run fine-tunes its weights")
@_recipe_options
def add(datasets: tuple[str, ...], weekly_at: str | None, paused: bool, **options: Any) -> None:
    """Add a retraining schedule: give one of --every-minutes, --every-hours, --daily-at, --weekly-at, --cron."""
    from fracture import audit_log, schedule_requests

    with _session() as session:
        request = {key: value for key, value in options.items() if value is not None}
        request.update(dataset_ids=_dataset_ids(session, datasets), weekly_at=_weekly(weekly_at),
                       enabled=False if paused else None)
        row = schedule_requests.as_dict(session, schedule_requests.create(session, request, audit_log.CLI))
    click.echo(f"added schedule #{row['id']} {row['name']!r}: {row['description']}"
               + (", paused" if paused else f", next {row['next_run_local']}"))


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the schedules as the API's JSON")
def list_schedules(as_json: bool) -> None:
    """List the schedules: when each is due, its next firing, whether it is paused, its last run."""
    from sqlalchemy import select

    from fracture import schedule_requests
    from fracture.models import Schedule

    with _session() as session:
        rows = [schedule_requests.as_dict(session, s) for s in session.scalars(select(Schedule).order_by(Schedule.id))]
    if as_json:
        click.echo(json.dumps({"schedules": rows}, indent=2, default=_iso))
        return
    _table(rows)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _table(rows: list[dict[str, Any]]) -> None:
    """The schedules as an aligned table, times of day in each schedule's own time zone."""
    if not rows:
        click.echo("no schedules (add one with `fracture schedules add`)")
        return
    head = ("ID", "NAME", "DATASETS", "CADENCE", "NEXT", "PAUSED", "LAST RUN")
    lines = [head, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    last = row["last_run_at"]
    return (str(row["id"]), row["name"], ", ".join(d["name"] for d in row["datasets"]) or "-", row["description"],
            row["next_run_local"] or "-", "no" if row["enabled"] else "yes",
            f"{last:%Y-%m-%d %H:%M} UTC" if last else "never")


def _set_enabled(schedule_id: int, enabled: bool) -> None:
    from fracture import audit_log, schedule_requests

    with _session() as session:
        changed = schedule_requests.change(session, schedule_id, {"enabled": enabled}, audit_log.CLI)
        row = schedule_requests.as_dict(session, changed)
    click.echo(f"schedule #{row['id']} {row['name']!r} "
               + (f"resumed: next {row['next_run_local']}" if enabled else "paused"))


@schedules.command("pause")
@click.argument("schedule_id", type=int)
def pause(schedule_id: int) -> None:
    """Pause schedule SCHEDULE_ID: it fires no more until resumed."""
    _set_enabled(schedule_id, False)


@schedules.command("resume")
@click.argument("schedule_id", type=int)
def resume(schedule_id: int) -> None:
    """Resume schedule SCHEDULE_ID; its next due time counts from now (paused slots are not caught up)."""
    _set_enabled(schedule_id, True)


@schedules.command("delete")
@click.argument("schedule_id", type=int)
@click.option("--yes", is_flag=True, help="do not ask first")
def delete(schedule_id: int, yes: bool) -> None:
    """Delete schedule SCHEDULE_ID; the runs it started are kept."""
    from fracture import audit_log, schedule_requests, trainings

    with _session() as session:
        schedule = trainings.get_schedule(session, schedule_id)
        name = schedule.name
        if not yes:
            click.confirm(f"Delete the schedule #{schedule_id} {name!r}? It will start no more training runs; "
                          "the runs it started are kept.", abort=True)
        schedule_requests.delete(session, schedule_id, audit_log.CLI)
    click.echo(f"schedule #{schedule_id} {name!r} deleted; its runs are kept")
