"""Retraining schedules: read a request into a spec, then add, change or delete (what the API and the forms share).

A schedule is due every N minutes or hours, daily or weekly at a time of day in its time zone, or by a cron
expression; each names its datasets and recipe. Writes are for admins. The beat's tick starts the runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flask import abort

from fracture import audit_log, schedule_params, schedule_times, trainings
from fracture.models import Schedule
from fracture.schedule_params import RECIPE_FIELDS
from fracture.schedule_times import ScheduleError, Spec
from web.auth import current_user, require_admin
from web.context import db

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


def _name(data: Mapping[str, Any], default: str | None) -> str | None:
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        return default
    if not isinstance(name, str) or len(name.strip()) > 128:
        raise ScheduleError("the name must be text of at most 128 characters")
    return name.strip()


def _params(data: Mapping[str, Any], current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The datasets and recipe asked for, over the current ones; None when the request changes neither."""
    if current is not None and "dataset_ids" not in data and not any(k in data for k in RECIPE_FIELDS):
        return None
    merged = {**(current or {}), **{k: data[k] for k in ("dataset_ids", *RECIPE_FIELDS) if k in data}}
    return schedule_params.check_params(db(), merged)


def _enabled(data: Mapping[str, Any]) -> bool | None:
    value = data.get("enabled")
    if value is None or isinstance(value, bool):
        return value
    raise ScheduleError('"enabled" must be true or false')


def create(data: Mapping[str, Any]) -> Schedule:
    """Add a schedule from an API body (or a form read into one)."""
    require_admin("add a retraining schedule")
    spec = spec_from(data)
    assert spec is not None
    params = _params(data, None) or {}
    schedule = trainings.add_schedule(db(), _name(data, "retrain") or "retrain", spec, params)
    if _enabled(data) is False:
        trainings.update_schedule(db(), schedule.id, enabled=False)
    audit_log.record(db(), current_user().username, "schedule.create", schedule.name,
                     {"id": schedule.id, "spec": trainings.schedule_spec(schedule).kind, "enabled": schedule.enabled})
    db().commit()
    return schedule


def change(schedule_id: int, data: Mapping[str, Any]) -> Schedule:
    """Change a schedule: any of name, spec, time zone, datasets, recipe, enabled."""
    require_admin("change a retraining schedule")
    schedule = get_schedule(schedule_id)
    schedule = trainings.update_schedule(
        db(), schedule_id, name=_name(data, None), spec=spec_from(data, trainings.schedule_spec(schedule)),
        params=_params(data, dict(schedule.params or {})), enabled=_enabled(data),
    )
    given = sorted(k for k, v in data.items() if v not in (None, ""))
    if given == ["enabled"]:  # the page's pause / resume button, or the API asked for that alone
        action = "schedule.resume" if schedule.enabled else "schedule.pause"
    else:
        action = "schedule.change"
    audit_log.record(db(), current_user().username, action, schedule.name, {"id": schedule_id, "fields": given})
    db().commit()
    return schedule


def remove(schedule_id: int) -> str:
    """Delete a schedule (its runs stay); return its name."""
    require_admin("delete a retraining schedule")
    name = get_schedule(schedule_id).name
    trainings.delete_schedule(db(), schedule_id)
    audit_log.record(db(), current_user().username, "schedule.delete", name, {"id": schedule_id})
    db().commit()
    return name


def get_schedule(schedule_id: int) -> Schedule:
    schedule = db().get(Schedule, schedule_id)
    if schedule is None:
        abort(404, description=f"There is no schedule with id {schedule_id}.")
    return schedule
