"""The schedules API's shapes: a schedule (its spec as asked and in words, times in UTC) and the request body."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from sqlalchemy import select
from sqlalchemy.orm import object_session

from fracture import schedule_times, trainings
from fracture.models import Dataset, Schedule
from fracture.recipe import RECIPE
from fracture.schedule_times import ScheduleError
from web.timefmt import Timestamp


def _local(value: datetime | None, timezone: str) -> str | None:
    if value is None:
        return None
    try:
        return value.astimezone(schedule_times.zone(timezone)).strftime("%Y-%m-%d %H:%M %Z")
    except ScheduleError:
        return None


class ScheduleSchema(ma.Schema):
    id = f.Integer(required=True)
    name = f.String(required=True)
    kind = f.String(required=True, metadata={"enum": ["every", "daily", "weekly", "cron"]})
    spec = f.Dict(required=True, metadata={"description": "The spec as asked for: one of the body's spec keys."})
    description = f.String(required=True, metadata={"description": "When it is due, in words."})
    timezone = f.String(required=True)
    enabled = f.Boolean(required=True)
    next_run_at = Timestamp()
    next_run_local = f.String(allow_none=True)
    last_run_at = Timestamp()
    params = f.Dict(required=True)
    datasets = f.List(f.Dict(), required=True)

    @ma.pre_dump
    def _flatten(self, schedule: Schedule, **_: Any) -> dict[str, Any]:
        session = object_session(schedule)
        assert session is not None
        spec = trainings.schedule_spec(schedule)
        shapes: dict[str, dict[str, Any]] = {
            "every": {"every_minutes": spec.interval_minutes}, "daily": {"daily_at": spec.time_of_day},
            "weekly": {"weekly_at": {"weekday": spec.weekday, "time": spec.time_of_day}}, "cron": {"cron": spec.cron},
        }
        next_run = schedule.next_run_at
        params = dict(schedule.params or {})
        ids = [i for i in params.get("dataset_ids") or [] if isinstance(i, int)]
        names = {row.id: row.name
                 for row in session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(ids)))}
        return {
            "id": schedule.id, "name": schedule.name, "kind": spec.kind, "spec": shapes.get(spec.kind, {}),
            "description": schedule_times.describe(spec), "timezone": spec.timezone, "enabled": schedule.enabled,
            "next_run_at": next_run if schedule.enabled else None,
            "next_run_local": _local(next_run, spec.timezone) if schedule.enabled else None,
            "last_run_at": schedule.last_run_at, "params": params,
            "datasets": [{"id": i, "name": names.get(i, f"#{i} (deleted)")} for i in ids],
        }


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = ScheduleSchema().dump(schedule)
    return out


class ScheduleListSchema(ma.Schema):
    schedules = f.List(f.Nested(ScheduleSchema), required=True)


_WHEN = "Give exactly one of cron, every_minutes, every_hours, daily_at, weekly_at (on a change: or none)."
# A schedule's request: when (one spec key), its time zone, name, datasets and recipe (each recipe field declared
# once, in fracture.recipe.RECIPE); the values are checked, with their reasons, by web.schedules.service.
ScheduleBody = ma.Schema.from_dict({
    "name": f.Raw(metadata={"description": "At most 128 characters (default 'retrain')."}),
    "cron": f.Raw(metadata={"description": f"A cron expression. {_WHEN}"}),
    "every_minutes": f.Raw(metadata={"description": "Due every N minutes."}),
    "every_hours": f.Raw(metadata={"description": "Due every N hours."}),
    "daily_at": f.Raw(metadata={"description": "HH:MM, in `timezone`."}),
    "weekly_at": f.Raw(metadata={"description": '{"weekday": 0-6 or a name, "time": "HH:MM"}'}),
    "timezone": f.Raw(metadata={"description": "An IANA name such as Europe/Berlin (default UTC)."}),
    "enabled": f.Raw(metadata={"description": "true or false."}),
    "dataset_ids": f.Raw(metadata={"description": "Ready training datasets' ids."}),
    **{name: f.Raw(metadata={"description": f"The recipe's {name} (default {default!r})."})
       for name, default in RECIPE.items()},
}, name="ScheduleBody")
