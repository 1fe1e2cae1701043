"""Retraining schedules: the API's and the forms' add, change and delete, for admins (what they share).

A request is read and checked by the core (fracture.schedule_requests, which `fracture schedules` calls too);
here, who may write, a 404 for a missing schedule, and the commit. The beat's tick starts the runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort

from fracture import schedule_requests
from fracture.models import Schedule
from web.auth import current_user, require_admin
from web.context import db


def create(data: Mapping[str, Any]) -> Schedule:
    """Add a schedule from an API body (or a form read into one)."""
    require_admin("add a retraining schedule")
    schedule = schedule_requests.create(db(), data, current_user().username)
    db().commit()
    return schedule


def change(schedule_id: int, data: Mapping[str, Any]) -> Schedule:
    """Change a schedule: any of name, spec, time zone, datasets, recipe, enabled."""
    require_admin("change a retraining schedule")
    get_schedule(schedule_id)
    schedule = schedule_requests.change(db(), schedule_id, data, current_user().username)
    db().commit()
    return schedule


def remove(schedule_id: int) -> str:
    """Delete a schedule (its runs stay); return its name."""
    require_admin("delete a retraining schedule")
    get_schedule(schedule_id)
    name = schedule_requests.delete(db(), schedule_id, current_user().username)
    db().commit()
    return name


def get_schedule(schedule_id: int) -> Schedule:
    schedule = db().get(Schedule, schedule_id)
    if schedule is None:
        abort(404, description=f"There is no schedule with id {schedule_id}.")
    return schedule
