"""The schedules section of the training page: its rows and choices, and the admins' forms (add, edit, pause or
resume, delete: delete asks first, web/confirm.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, flash, redirect, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import datasets, schedule_params, schedule_times
from fracture.models import Schedule
from fracture.recipe import RECIPE_FIELDS
from fracture.registry import newest_first
from fracture.schedule_params import RecipeError
from fracture.schedule_times import ScheduleError
from web.auth import require_admin
from web.confirm import asked, confirm_page
from web.context import db
from web.schedules.schemas import schedule_json
from web.schedules.service import change, create, get_schedule, remove

bp = Blueprint("schedules", __name__)
TRAINING_PAGE = "/training"  # the page the schedules section sits on


def section() -> dict[str, Any]:
    """The training page's schedules section (_schedules.html): every schedule, the datasets a schedule may name
    (ready training datasets: evaluation datasets are locked), the versions it may start from and the forms'
    choices."""
    session = db()
    return {
        "rows": [{**row, "delete_question": delete_question(row)}
                 for row in map(schedule_json, session.scalars(select(Schedule).order_by(Schedule.id)))],
        "choices": datasets.ready_training_datasets(session),
        "versions": newest_first(session),
        "options": {"weekdays": list(enumerate(schedule_times.WEEKDAYS)), "words": schedule_params.WORD_FIELDS,
                    "ints": schedule_params.INT_FIELDS, "floats": schedule_params.FLOAT_FIELDS},
    }


@bp.errorhandler(ScheduleError)
@bp.errorhandler(RecipeError)
def _refused(exc: ValueError) -> ResponseReturnValue:
    db().rollback()
    flash(str(exc), "error")
    return redirect(TRAINING_PAGE)


def form_data(form: Mapping[str, Any], dataset_ids: list[str]) -> dict[str, Any]:
    """A schedule form read into an API body: its kind's fields become the one spec key."""
    kind = form.get("kind") or ("every" if form.get("interval_minutes") else "")
    data: dict[str, Any] = {"name": form.get("name"), "timezone": form.get("timezone") or None,
                            "dataset_ids": dataset_ids, "start_from": form.get("start_from"),
                            **{k: form.get(k) for k in RECIPE_FIELDS}}
    if kind == "every":
        unit = "every_hours" if form.get("unit") == "hours" else "every_minutes"
        data[unit] = form.get("interval") or form.get("interval_minutes") or ""
        if data[unit] == "":
            raise ScheduleError("give the interval: a whole number of minutes or hours")
    elif kind == "daily":
        data["daily_at"] = form.get("time") or ""
        if not data["daily_at"]:
            raise ScheduleError("give the time of day, HH:MM")
    elif kind == "weekly":
        data["weekly_at"] = {"weekday": form.get("weekday"), "time": form.get("time")}
    elif kind == "cron":
        data["cron"] = form.get("cron") or " "
    else:
        raise ScheduleError("choose when the schedule is due: every, daily, weekly or cron")
    return data


@bp.post("/training/schedules")
def add_page() -> ResponseReturnValue:
    require_admin("add a retraining schedule")
    schedule = create(form_data(request.form, request.form.getlist("dataset_ids")))
    flash(f"Schedule '{schedule.name}' added: {schedule_json(schedule)['description']}.", "ok")
    return redirect(TRAINING_PAGE)


@bp.post("/training/schedules/<int:schedule_id>")
def edit_page(schedule_id: int) -> ResponseReturnValue:
    require_admin("change a retraining schedule")
    schedule = change(schedule_id, form_data(request.form, request.form.getlist("dataset_ids")))
    flash(f"Schedule '{schedule.name}' saved: {schedule_json(schedule)['description']}.", "ok")
    return redirect(TRAINING_PAGE)


@bp.post("/training/schedules/<int:schedule_id>/enabled")
def enable_page(schedule_id: int) -> ResponseReturnValue:
    schedule = change(schedule_id, {"enabled": request.form.get("enabled") == "1"})
    flash(f"Schedule '{schedule.name}' {'resumed' if schedule.enabled else 'paused'}.", "ok")
    return redirect(TRAINING_PAGE)


def delete_question(row: Mapping[str, Any]) -> str:
    """What deleting a schedule (in the API's form) does, asked before it is done (web/confirm.py)."""
    return (f"Delete the schedule '{row['name']}', due {row['description']}?\n"
            "It will start no more training runs; the runs it started are kept. This cannot be undone.")


@bp.post("/training/schedules/<int:schedule_id>/delete")
def delete_page(schedule_id: int) -> ResponseReturnValue:
    if asked():
        require_admin("delete a retraining schedule")
        row = schedule_json(get_schedule(schedule_id))
        return confirm_page(delete_question(row), f"Delete schedule '{row['name']}'", f"{TRAINING_PAGE}#schedules")
    flash(f"Schedule '{remove(schedule_id)}' deleted; its runs are kept.", "ok")
    return redirect(TRAINING_PAGE)
