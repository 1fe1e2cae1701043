"""Retraining schedules: the JSON API and the training page's forms (add, edit, pause or resume, delete).

A schedule is due every N minutes or hours, daily or weekly at a time of day in its time zone, or by a cron
expression; each names its datasets and recipe. Writes are for admins. The beat's tick starts the runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture import schedule_params, schedule_times, trainings
from fracture.models import Dataset, DatasetRole, DatasetStatus, Schedule
from fracture.schedule_params import RECIPE_FIELDS, RecipeError
from fracture.schedule_times import ScheduleError, Spec
from web.auth import require_admin
from web.confirm import asked, confirm_page
from web.context import db

bp = Blueprint("schedules", __name__)
TRAINING_PAGE = "/training"  # the page the schedules section sits on
SPEC_KEYS = ("cron", "every_minutes", "every_hours", "daily_at", "weekly_at")
SPEC_HINT = ('give one of "cron", "every_minutes", "every_hours", "daily_at": "HH:MM" or '
             '"weekly_at": {"weekday", "time"}')


# ---------------------------------------------------------------- reading a request


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


# ---------------------------------------------------------------- actions shared by pages and API


def create(data: Mapping[str, Any]) -> Schedule:
    """Add a schedule from an API body (or a form read into one)."""
    require_admin("add a retraining schedule")
    spec = spec_from(data)
    assert spec is not None
    params = _params(data, None) or {}
    schedule = trainings.add_schedule(db(), _name(data, "retrain") or "retrain", spec, params)
    if _enabled(data) is False:
        trainings.update_schedule(db(), schedule.id, enabled=False)
    db().commit()
    return schedule


def change(schedule_id: int, data: Mapping[str, Any]) -> Schedule:
    """Change a schedule: any of name, spec, time zone, datasets, recipe, enabled."""
    require_admin("change a retraining schedule")
    schedule = _get(schedule_id)
    schedule = trainings.update_schedule(
        db(), schedule_id, name=_name(data, None), spec=spec_from(data, trainings.schedule_spec(schedule)),
        params=_params(data, dict(schedule.params or {})), enabled=_enabled(data),
    )
    db().commit()
    return schedule


def remove(schedule_id: int) -> str:
    """Delete a schedule (its runs stay); return its name."""
    require_admin("delete a retraining schedule")
    name = _get(schedule_id).name
    trainings.delete_schedule(db(), schedule_id)
    db().commit()
    return name


def _get(schedule_id: int) -> Schedule:
    schedule = db().get(Schedule, schedule_id)
    if schedule is None:
        abort(404, description=f"There is no schedule with id {schedule_id}.")
    return schedule


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """The API's form of a schedule: its spec as it was asked for and in words, times in UTC (ISO 8601)."""
    spec = trainings.schedule_spec(schedule)
    shapes: dict[str, dict[str, Any]] = {
        "every": {"every_minutes": spec.interval_minutes}, "daily": {"daily_at": spec.time_of_day},
        "weekly": {"weekly_at": {"weekday": spec.weekday, "time": spec.time_of_day}}, "cron": {"cron": spec.cron},
    }
    shape = shapes.get(spec.kind, {})
    next_run, last_run = _utc(schedule.next_run_at), _utc(schedule.last_run_at)
    params = dict(schedule.params or {})
    ids = [i for i in params.get("dataset_ids") or [] if isinstance(i, int)]
    names = {row.id: row.name for row in db().execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(ids)))}
    return {
        "id": schedule.id, "name": schedule.name, "kind": spec.kind, "spec": shape,
        "description": schedule_times.describe(spec), "timezone": spec.timezone, "enabled": schedule.enabled,
        "next_run_at": next_run.isoformat() if next_run and schedule.enabled else None,
        "next_run_local": _local(next_run, spec.timezone) if schedule.enabled else None,
        "last_run_at": last_run.isoformat() if last_run else None, "params": params,
        "datasets": [{"id": i, "name": names.get(i, f"#{i} (deleted)")} for i in ids],
    }


def _local(value: datetime | None, timezone: str) -> str | None:
    if value is None:
        return None
    try:
        return value.astimezone(schedule_times.zone(timezone)).strftime("%Y-%m-%d %H:%M %Z")
    except ScheduleError:
        return None


@bp.app_template_global()
def schedule_rows() -> list[dict[str, Any]]:
    """Every schedule in the API's form, for the training page's schedules section."""
    return [schedule_json(s) for s in db().scalars(select(Schedule).order_by(Schedule.id))]


@bp.app_template_global()
def schedulable_datasets() -> list[Dataset]:
    """The READY training datasets a schedule may name (evaluation datasets are locked)."""
    return list(db().scalars(select(Dataset).where(
        Dataset.status == DatasetStatus.READY, Dataset.role == DatasetRole.TRAINING).order_by(Dataset.name)))


@bp.app_template_global()
def schedule_form_options() -> dict[str, Any]:
    """Choices of the schedule forms: weekdays, recipe words."""
    return {"weekdays": list(enumerate(schedule_times.WEEKDAYS)), "words": schedule_params.WORD_FIELDS,
            "ints": schedule_params.INT_FIELDS}


# ---------------------------------------------------------------- API


@bp.errorhandler(ScheduleError)
@bp.errorhandler(RecipeError)
def _refused(exc: ValueError) -> ResponseReturnValue:
    db().rollback()
    message = str(exc)
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), 400
    flash(message, "error")
    return redirect(TRAINING_PAGE)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ScheduleError(f"send the schedule as a JSON object: {SPEC_HINT}, and dataset_ids")
    return body


@bp.post("/api/schedules")
def api_create() -> tuple[Response, int]:
    return jsonify(schedule_json(create(_body()))), 201


@bp.get("/api/schedules")
def api_list() -> Response:
    return jsonify({"schedules": schedule_rows()})


@bp.get("/api/schedules/<int:schedule_id>")
def api_get(schedule_id: int) -> Response:
    return jsonify(schedule_json(_get(schedule_id)))


@bp.patch("/api/schedules/<int:schedule_id>")
def api_change(schedule_id: int) -> Response:
    return jsonify(schedule_json(change(schedule_id, _body())))


@bp.delete("/api/schedules/<int:schedule_id>")
def api_delete(schedule_id: int) -> tuple[str, int]:
    remove(schedule_id)
    return "", 204


# ---------------------------------------------------------------- pages (forms on /training)


def form_data(form: Mapping[str, Any], dataset_ids: list[str]) -> dict[str, Any]:
    """A schedule form read into an API body: its kind's fields become the one spec key."""
    kind = form.get("kind") or ("every" if form.get("interval_minutes") else "")
    data: dict[str, Any] = {"name": form.get("name"), "timezone": form.get("timezone") or None,
                            "dataset_ids": dataset_ids, **{k: form.get(k) for k in RECIPE_FIELDS}}
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


@bp.app_template_global()
def delete_question(row: Mapping[str, Any]) -> str:
    """What deleting a schedule (in the API's form) does, asked before it is done (web/confirm.py)."""
    return (f"Delete the schedule '{row['name']}', due {row['description']}?\n"
            "It will start no more training runs; the runs it started are kept. This cannot be undone.")


@bp.post("/training/schedules/<int:schedule_id>/delete")
def delete_page(schedule_id: int) -> ResponseReturnValue:
    if asked():
        require_admin("delete a retraining schedule")
        row = schedule_json(_get(schedule_id))
        return confirm_page(delete_question(row), f"Delete schedule '{row['name']}'", f"{TRAINING_PAGE}#schedules")
    flash(f"Schedule '{remove(schedule_id)}' deleted; its runs are kept.", "ok")
    return redirect(TRAINING_PAGE)
