"""The schedules API's shapes: a schedule (its spec as asked and in words, times in UTC) and the request body."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from sqlalchemy.orm import object_session

from fracture import schedule_requests
from fracture.models import Schedule
from fracture.recipe import RECIPE
from web.timefmt import Timestamp


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
        return schedule_requests.as_dict(session, schedule)


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = ScheduleSchema().dump(schedule)
    return out


class ScheduleListSchema(ma.Schema):
    schedules = f.List(f.Nested(ScheduleSchema), required=True)


_WHEN = "Give exactly one of cron, every_minutes, every_hours, daily_at, weekly_at (on a change: or none)."
# A schedule's request: when (one spec key), its time zone, name, datasets and recipe (each recipe field declared
# once, in fracture.recipe.RECIPE); the values are checked, with their reasons, by fracture.schedule_requests.
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
    "start_from": f.Raw(metadata={"description": "A model version's name or id: its weights are fine-tuned."}),
    **{name: f.Raw(metadata={"description": f"The recipe's {name} (default {default!r})."})
       for name, default in RECIPE.items()},
}, name="ScheduleBody")
