"""A retraining schedule asked for in plain values (an API body, a form read into one, the command line's options):
read and checked into fracture.trainings' calls; and a schedule shown as plain values.

The web's API and forms and the `fracture schedules` command share these, so a request means the same and is
refused with the same one-sentence reasons (ScheduleError, RecipeError) wherever it comes from. Callers check
who may write and commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture import audit_log, schedule_params, schedule_times, trainings
from fracture.models import Dataset, Schedule
from fracture.recipe import RECIPE_FIELDS
from fracture.schedule_times import ScheduleError, Spec

SPEC_KEYS = ("cron", "every_minutes", "every_hours", "daily_at", "weekly_at")
SPEC_HINT = ('give one of "cron", "every_minutes", "every_hours", "daily_at": "HH:MM" or '
             '"weekly_at": {"weekday", "time"}')


def spec_from(data: Mapping[str, Any], current: Spec | None = None) -> Spec | None:
    """The spec a request asks for (None when it names none and keeps its time zone); ScheduleError if unclear."""
    given = [key for key in SPEC_KEYS if data.get(key) not in (None, "")]
    if len(given) > 1:
        raise ScheduleError(f"give only one of {', '.join(given)}: a schedule has one kind")
    timezone = data.get("timezone")
    if timezone is not None and not isinstance(timezone, str):
        raise ScheduleError("the time zone must be an IANA name such as 'Europe/Berlin'")
    if not given:
        if current is None:
            raise ScheduleError(f"say when the schedule is due: {SPEC_HINT}")
        return replace(current, timezone=timezone) if timezone else None
    tz = timezone or (current.timezone if current else "UTC")
    key, value = given[0], data[given[0]]
    if key == "cron":
        return Spec("cron", cron=value if isinstance(value, str) else repr(value), timezone=tz)
    if key in ("every_minutes", "every_hours"):
        return Spec("every", interval_minutes=schedule_times.interval(value, 60 if key == "every_hours" else 1),
                    timezone=tz)
    if key == "daily_at":
        return Spec("daily", time_of_day=schedule_times.time_of_day(value), timezone=tz)
    if not isinstance(value, Mapping):
        raise ScheduleError('weekly_at is {"weekday": 0-6 or a name, "time": "HH:MM"}')
    return Spec("weekly", weekday=schedule_times.weekday(value.get("weekday")),
                time_of_day=schedule_times.time_of_day(value.get("time")), timezone=tz)


def name_from(data: Mapping[str, Any], default: str | None) -> str | None:
    """The name asked for, stripped, or `default` when none is given; ScheduleError if unusable."""
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        return default
    if not isinstance(name, str) or len(name.strip()) > 128:
        raise ScheduleError("the name must be text of at most 128 characters")
    return name.strip()


def params_from(session: Session, data: Mapping[str, Any], current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The datasets, recipe and version to start from asked for, over the current ones; None when the request
    changes none of them."""
    keys = ("dataset_ids", "start_from", *RECIPE_FIELDS)
    if current is not None and not any(k in data for k in keys):
        return None
    merged = {**(current or {}), **{k: data[k] for k in keys if k in data}}
    return schedule_params.check_params(session, merged)


def enabled_from(data: Mapping[str, Any]) -> bool | None:
    """Whether the request pauses (False) or resumes (True) the schedule, or None."""
    value = data.get("enabled")
    if value is None or isinstance(value, bool):
        return value
    raise ScheduleError('"enabled" must be true or false')


def create(session: Session, data: Mapping[str, Any], actor: str) -> Schedule:
    """Add a schedule from a request, recorded in the audit log as `actor`'s (flushed, not committed)."""
    spec = spec_from(data)
    assert spec is not None
    params = params_from(session, data, None) or {}
    schedule = trainings.add_schedule(session, name_from(data, "retrain") or "retrain", spec, params)
    if enabled_from(data) is False:
        trainings.update_schedule(session, schedule.id, enabled=False)
    audit_log.record(session, actor, "schedule.create", schedule.name,
                     {"id": schedule.id, "spec": trainings.schedule_spec(schedule).kind, "enabled": schedule.enabled})
    return schedule


def change(session: Session, schedule_id: int, data: Mapping[str, Any], actor: str) -> Schedule:
    """Change any of a schedule's name, spec, time zone, datasets, recipe, enabled, recorded in the audit log as
    `actor`'s; LookupError if there is none."""
    schedule = trainings.get_schedule(session, schedule_id)
    schedule = trainings.update_schedule(
        session, schedule_id, name=name_from(data, None), spec=spec_from(data, trainings.schedule_spec(schedule)),
        params=params_from(session, data, dict(schedule.params or {})), enabled=enabled_from(data),
    )
    given = sorted(k for k, v in data.items() if v not in (None, ""))
    if given == ["enabled"]:  # pause / resume (the page's button, the API or the command line asked for that alone)
        action = "schedule.resume" if schedule.enabled else "schedule.pause"
    else:
        action = "schedule.change"
    audit_log.record(session, actor, action, schedule.name, {"id": schedule_id, "fields": given})
    return schedule


def delete(session: Session, schedule_id: int, actor: str) -> str:
    """Delete a schedule (its runs stay), recorded in the audit log as `actor`'s; return its name. LookupError if
    there is none."""
    name = trainings.get_schedule(session, schedule_id).name
    trainings.delete_schedule(session, schedule_id)
    audit_log.record(session, actor, "schedule.delete", name, {"id": schedule_id})
    return name


def _local(value: datetime | None, timezone: str) -> str | None:
    if value is None:
        return None
    try:
        return value.astimezone(schedule_times.zone(timezone)).strftime("%Y-%m-%d %H:%M %Z")
    except ScheduleError:
        return None


def as_dict(session: Session, schedule: Schedule) -> dict[str, Any]:
    """A schedule as plain values: its spec as asked (one of SPEC_KEYS) and in words, its datasets by name, the next
    due time (None while paused) in UTC and in its time zone; datetimes stay datetimes."""
    spec = trainings.schedule_spec(schedule)
    shapes: dict[str, dict[str, Any]] = {
        "every": {"every_minutes": spec.interval_minutes}, "daily": {"daily_at": spec.time_of_day},
        "weekly": {"weekly_at": {"weekday": spec.weekday, "time": spec.time_of_day}}, "cron": {"cron": spec.cron},
    }
    next_run = schedule.next_run_at
    params = dict(schedule.params or {})
    ids = [i for i in params.get("dataset_ids") or [] if isinstance(i, int)]
    names = {row.id: row.name for row in session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(ids)))}
    return {
        "id": schedule.id, "name": schedule.name, "kind": spec.kind, "spec": shapes.get(spec.kind, {}),
        "description": schedule_times.describe(spec), "timezone": spec.timezone, "enabled": schedule.enabled,
        "next_run_at": next_run if schedule.enabled else None,
        "next_run_local": _local(next_run, spec.timezone) if schedule.enabled else None,
        "last_run_at": schedule.last_run_at, "params": params,
        "datasets": [{"id": i, "name": names.get(i, f"#{i} (deleted)")} for i in ids],
    }
