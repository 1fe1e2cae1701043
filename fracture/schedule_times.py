"""When a retraining schedule is due: its spec (every N minutes, daily or weekly at a time, or cron), checked, in words.

Times of day and cron fields are read in the schedule's IANA time zone (zoneinfo, so DST is handled); every due
time leaves here in UTC. Cron expressions are parsed by cronsim (Debian cron's rules, DST included), not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from fracture.dbtypes import as_utc

KINDS = ("every", "daily", "weekly", "cron")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MAX_INTERVAL_MINUTES = 366 * 24 * 60
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class ScheduleError(ValueError):
    """A schedule's spec, time zone or parameters cannot be used; the message says why in one sentence."""


@dataclass(frozen=True)
class Spec:
    """When a schedule is due: one of KINDS with its fields, in `timezone`."""

    kind: str
    interval_minutes: int | None = None
    time_of_day: str | None = None  # "HH:MM"
    weekday: int | None = None  # 0 = Monday
    cron: str | None = None
    timezone: str = "UTC"


def zone(name: str | None) -> ZoneInfo:
    """The IANA time zone `name` (UTC when empty); ScheduleError if there is no such zone."""
    name = (name or "UTC").strip() or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'") from None


def time_of_day(text: object) -> str:
    """A time of day as "HH:MM" (24-hour clock); ScheduleError otherwise."""
    match = _TIME.match(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        raise ScheduleError(f"the time of day must be HH:MM on a 24-hour clock, such as 02:30, not {text!r}")
    return f"{int(match[1]):02d}:{match[2]}"


def weekday(value: object) -> int:
    """A weekday as 0 (Monday) to 6 (Sunday), from that number or the day's English name; ScheduleError otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        for i, name in enumerate(WEEKDAYS):
            if text in (name.lower(), name[:3].lower()):
                return i
        if text.isdecimal():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 6:
        return value
    raise ScheduleError(f"the weekday must be 0 (Monday) to 6 (Sunday) or a day's name, not {value!r}")


def interval(value: object, unit_minutes: int = 1) -> int:
    """An interval in whole minutes (from a count of `unit_minutes`), at least 1 minute; ScheduleError otherwise."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScheduleError(f"the interval must be a whole number of at least 1 minute, not {value!r}")
    minutes = value * unit_minutes
    if minutes > MAX_INTERVAL_MINUTES:
        raise ScheduleError(f"the interval must be at most {MAX_INTERVAL_MINUTES} minutes (366 days)")
    return minutes


def cron_expression(text: object) -> str:
    """A five-field cron expression (minute hour day month weekday), checked by cronsim; ScheduleError otherwise."""
    expr = " ".join(text.split()) if isinstance(text, str) else ""
    if len(expr.split()) != 5:
        raise ScheduleError(f"a cron expression has five fields (minute hour day month weekday), not {text!r}")
    try:
        next(CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC)))
    except (CronSimError, StopIteration, ValueError) as e:
        raise ScheduleError(f"invalid cron expression {expr!r}: {e}") from None
    return expr


def check(spec: Spec) -> Spec:
    """`spec` with its fields checked and normalised (fields of other kinds dropped); ScheduleError otherwise."""
    zone(spec.timezone)
    tz = (spec.timezone or "UTC").strip() or "UTC"
    if spec.kind == "every":
        return Spec("every", interval_minutes=interval(spec.interval_minutes), timezone=tz)
    if spec.kind == "daily":
        return Spec("daily", time_of_day=time_of_day(spec.time_of_day), timezone=tz)
    if spec.kind == "weekly":
        return Spec("weekly", time_of_day=time_of_day(spec.time_of_day), weekday=weekday(spec.weekday), timezone=tz)
    if spec.kind == "cron":
        return Spec("cron", cron=cron_expression(spec.cron), timezone=tz)
    raise ScheduleError(f"the schedule kind must be one of {', '.join(KINDS)}, not {spec.kind!r}")


def _at(day: date, hhmm: str, tz: ZoneInfo) -> datetime:
    """`hhmm` local on `day`, in UTC: a time skipped by a DST change is shifted by the gap, a repeated one is once."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    # fold=0: the first of a repeated time; a skipped time is read with the offset before the change.
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def next_due(spec: Spec, after: datetime, previous: datetime | None = None) -> datetime:
    """The first due time of `spec` strictly after `after`, in UTC.

    An interval keeps its phase from `previous` (the last due time) when given, skipping the slots missed
    before `after`; without it the first is one interval after `after`.
    """
    after = as_utc(after)
    tz = zone(spec.timezone)
    if spec.kind == "every":
        step = timedelta(minutes=spec.interval_minutes or 0)
        if step <= timedelta(0):
            raise ScheduleError("the interval must be a whole number of at least 1 minute")
        if previous is None:
            return (after + step).replace(microsecond=0).astimezone(UTC)
        previous = as_utc(previous)
        if previous > after:
            return previous.astimezone(UTC)
        return (previous + step * ((after - previous) // step + 1)).astimezone(UTC)
    if spec.kind in ("daily", "weekly"):
        local = after.astimezone(tz).date()
        for offset in range(-1, 9):
            day = local + timedelta(days=offset)
            if spec.kind == "weekly" and day.weekday() != spec.weekday:
                continue
            due = _at(day, spec.time_of_day or "", tz)
            if due > after:
                return due
        raise ScheduleError(f"no due time found for {describe(spec)}")  # pragma: no cover (a week always has one)
    if spec.kind == "cron":
        try:
            return next(CronSim(spec.cron or "", after.astimezone(tz))).astimezone(UTC)
        except (CronSimError, StopIteration, ValueError) as e:
            raise ScheduleError(f"invalid cron expression {spec.cron!r}: {e}") from None
    raise ScheduleError(f"the schedule kind must be one of {', '.join(KINDS)}, not {spec.kind!r}")


def describe(spec: Spec) -> str:
    """The spec in words, such as "weekly on Monday at 02:00 (Europe/Berlin)"."""
    where = f" ({spec.timezone})" if spec.kind != "every" else ""
    if spec.kind == "every":
        minutes = spec.interval_minutes or 0
        if minutes % (24 * 60) == 0:
            n, unit = minutes // (24 * 60), "day"
        elif minutes % 60 == 0:
            n, unit = minutes // 60, "hour"
        else:
            n, unit = minutes, "minute"
        return f"every {unit}" if n == 1 else f"every {n} {unit}s"
    if spec.kind == "daily":
        return f"daily at {spec.time_of_day}{where}"
    if spec.kind == "weekly":
        day = WEEKDAYS[spec.weekday] if spec.weekday is not None and 0 <= spec.weekday <= 6 else "?"
        return f"weekly on {day} at {spec.time_of_day}{where}"
    return f"cron '{spec.cron}'{where}"
