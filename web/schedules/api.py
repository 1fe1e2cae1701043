"""The schedules API: retraining schedules, read by everyone signed in, written by admins."""

from __future__ import annotations

from typing import Any

from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture.models import Schedule
from fracture.schedule_params import RecipeError
from fracture.schedule_times import ScheduleError
from web.context import db
from web.openapi import ApiBlueprint
from web.schedules import schemas as s
from web.schedules.service import change, create, get_schedule, remove

bp = ApiBlueprint("schedules_api", __name__, url_prefix="/api",
                  description="Retraining schedules: every N minutes or hours, daily, weekly or by cron.")


@bp.errorhandler(ScheduleError)
@bp.errorhandler(RecipeError)
def _refused(exc: ValueError) -> ResponseReturnValue:
    db().rollback()
    return {"error": str(exc)}, 400


@bp.post("/schedules")
@bp.arguments(s.ScheduleBody)
@bp.response(201, s.ScheduleSchema)
def api_create(body: dict[str, Any]) -> tuple[Schedule, int]:
    """Add a schedule (admins)."""
    return create(body), 201


@bp.get("/schedules")
@bp.response(200, s.ScheduleListSchema)
def api_list() -> dict[str, Any]:
    """Every schedule."""
    return {"schedules": db().scalars(select(Schedule).order_by(Schedule.id)).all()}


@bp.get("/schedules/<int:schedule_id>")
@bp.response(200, s.ScheduleSchema)
def api_get(schedule_id: int) -> Schedule:
    """One schedule."""
    return get_schedule(schedule_id)


@bp.patch("/schedules/<int:schedule_id>")
@bp.arguments(s.ScheduleBody)
@bp.response(200, s.ScheduleSchema)
def api_change(body: dict[str, Any], schedule_id: int) -> Schedule:
    """Change any of name, spec, time zone, datasets, recipe, enabled (admins)."""
    return change(schedule_id, body)


@bp.delete("/schedules/<int:schedule_id>")
@bp.response(204)
def api_delete(schedule_id: int) -> tuple[str, int]:
    """Delete a schedule; the runs it started are kept (admins)."""
    remove(schedule_id)
    return "", 204
