"""Retraining schedules: due times of every kind (time zones, DST), refusals, the API and the page's forms,
exactly one run per due time (two ticks, two threads), and the real thing: beat + an inference worker on redis,
with beat restarted around the due time and a second beat running by mistake.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from harness import WorkerFactory, start_proc, wait_for
from installation import VENV_BIN, add_dataset, add_user
from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import func, select
from web_client import make_client

from fracture import migrate, trainings
from fracture.config import Settings, get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Dataset, ScheduleFiring, TrainingRun
from fracture.registry import register_checkpoint
from fracture.schedule_times import ScheduleError, Spec, check, describe, next_due
from fracture.storage import Storage

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def dues(spec: Spec, after: datetime, n: int = 3) -> list[datetime]:
    out = []
    for _ in range(n):
        after = next_due(spec, after)
        out.append(after)
    return out


# ---------------------------------------------------------------- due times


def test_every_interval_keeps_its_phase_and_skips_missed_slots() -> None:
    spec = Spec("every", interval_minutes=90)
    assert next_due(spec, utc(2026, 1, 1, 10, 0, 0)) == utc(2026, 1, 1, 11, 30)
    # Down from 10:00 to 13:05: the next slot of the same phase (14:30), not 11:30 and 13:00 at once.
    assert next_due(spec, utc(2026, 1, 1, 13, 5), previous=utc(2026, 1, 1, 10, 0)) == utc(2026, 1, 1, 14, 30)
    assert next_due(spec, utc(2026, 1, 1, 11, 30), previous=utc(2026, 1, 1, 10, 0)) == utc(2026, 1, 1, 13, 0)
    assert describe(spec) == "every 90 minutes" and describe(Spec("every", interval_minutes=120)) == "every 2 hours"


def test_daily_in_a_time_zone_across_both_dst_changes() -> None:
    spec = Spec("daily", time_of_day="02:30", timezone=BERLIN)
    # 29 March 2026 02:00 CET -> 03:00 CEST: 02:30 does not exist that day; it runs once, an hour later.
    assert dues(spec, utc(2026, 3, 27, 12)) == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30),
                                                utc(2026, 3, 30, 0, 30)]
    # 25 October 2026 03:00 CEST -> 02:00 CET: 02:30 happens twice that day; it runs once, the first time.
    assert dues(spec, utc(2026, 10, 23, 12)) == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30),
                                                 utc(2026, 10, 26, 1, 30)]
    assert describe(spec) == "daily at 02:30 (Europe/Berlin)"


def test_weekly_in_a_time_zone_across_a_dst_change() -> None:
    spec = check(Spec("weekly", time_of_day="9:00", weekday=0, timezone=NEW_YORK))
    assert spec.time_of_day == "09:00"
    # Mondays 09:00 New York: EST (UTC-5) before 8 March 2026, EDT (UTC-4) after.
    assert dues(spec, utc(2026, 2, 25)) == [utc(2026, 3, 2, 14), utc(2026, 3, 9, 13), utc(2026, 3, 16, 13)]
    assert describe(spec) == "weekly on Monday at 09:00 (America/New_York)"


def test_cron_in_a_time_zone_and_across_dst() -> None:
    weekdays = Spec("cron", cron="0 3 * * 1-5", timezone="Asia/Tokyo")  # 03:00 JST = 18:00 UTC the day before
    assert dues(weekdays, utc(2026, 11, 26, 12)) == [utc(2026, 11, 26, 18), utc(2026, 11, 29, 18),
                                                     utc(2026, 11, 30, 18)]
    quarter = Spec("cron", cron="*/15 * * * *")
    assert next_due(quarter, utc(2026, 1, 1, 10, 7, 30)) == utc(2026, 1, 1, 10, 15)
    assert next_due(quarter, utc(2026, 1, 1, 10, 15)) == utc(2026, 1, 1, 10, 30)  # strictly after
    # Debian cron's rule for a skipped time: the job runs when the clock jumps (03:00 CEST = 01:00 UTC).
    nightly = Spec("cron", cron="30 2 * * *", timezone=BERLIN)
    assert dues(nightly, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    assert dues(nightly, utc(2026, 10, 24, 12), 2) == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


@pytest.mark.parametrize(("spec", "words"), [
    (Spec("cron", cron="61 * * * *"), "invalid cron expression"),
    (Spec("cron", cron="* * *"), "five fields"),
    (Spec("cron", cron="0 0 * * * *"), "five fields"),
    (Spec("daily", time_of_day="25:00"), "HH:MM"),
    (Spec("weekly", time_of_day="02:00", weekday=7), "weekday"),
    (Spec("every", interval_minutes=0), "at least 1 minute"),
    (Spec("daily", time_of_day="02:00", timezone="Mars/Olympus"), "unknown time zone"),
    (Spec("daily", time_of_day="02:00", timezone="../../etc/passwd"), "unknown time zone"),
    (Spec("hourly"), "kind"),
])
def test_bad_specs_are_refused_with_a_reason(spec: Spec, words: str) -> None:
    with pytest.raises(ScheduleError, match=words):
        check(spec)


# ---------------------------------------------------------------- the API and the page


@pytest.fixture
def ready(settings: Settings) -> int:
    """A READY training dataset (recorded directly: schedules only read its role and status)."""
    return add_dataset(settings, "wrists")


def test_api_create_list_edit_pause_delete(client: FlaskClient, settings: Settings, ready: int) -> None:
    body = {"name": "nightly", "dataset_ids": [ready], "daily_at": "02:30", "timezone": BERLIN, "epochs": 3,
            "augment": "strong"}
    response = client.post("/api/schedules", json=body)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["kind"] == "daily" and created["spec"] == {"daily_at": "02:30"}
    assert created["timezone"] == BERLIN and created["enabled"] is True
    assert created["params"] == {"dataset_ids": [ready], "epochs": 3, "augment": "strong"}
    assert created["datasets"] == [{"id": ready, "name": "wrists"}]
    next_run = datetime.fromisoformat(created["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.astimezone(BERLIN_TZ()).strftime("%H:%M") == "02:30"
    sid = created["id"]

    listed = client.get("/api/schedules").get_json()["schedules"]
    assert [s["id"] for s in listed] == [sid] and listed[0]["description"] == "daily at 02:30 (Europe/Berlin)"

    # Other kinds, and the time zone or the recipe alone.
    for change, spec in (({"every_hours": 6}, {"every_minutes": 360}), ({"cron": "0 4 * * 1"}, {"cron": "0 4 * * 1"}),
                         ({"weekly_at": {"weekday": "friday", "time": "23:15"}},
                          {"weekly_at": {"weekday": 4, "time": "23:15"}})):
        changed = client.patch(f"/api/schedules/{sid}", json=change).get_json()
        assert changed["spec"] == spec and changed["timezone"] == BERLIN, changed
    changed = client.patch(f"/api/schedules/{sid}", json={"timezone": "UTC", "epochs": 5, "name": "weekly"}).get_json()
    assert changed["timezone"] == "UTC" and changed["name"] == "weekly" and changed["params"]["epochs"] == 5
    assert changed["params"]["augment"] == "strong"
    assert changed["spec"] == {"weekly_at": {"weekday": 4, "time": "23:15"}}

    paused = client.patch(f"/api/schedules/{sid}", json={"enabled": False}).get_json()
    assert paused["enabled"] is False and paused["next_run_at"] is None
    resumed = client.patch(f"/api/schedules/{sid}", json={"enabled": True}).get_json()
    assert resumed["enabled"] is True and datetime.fromisoformat(resumed["next_run_at"]) > datetime.now(UTC)

    assert client.delete(f"/api/schedules/{sid}").status_code == 204
    assert client.get("/api/schedules").get_json() == {"schedules": []}
    assert client.get(f"/api/schedules/{sid}").status_code == 404
    assert client.patch(f"/api/schedules/{sid}", json={"enabled": False}).status_code == 404


def BERLIN_TZ() -> Any:  # noqa: N802
    from zoneinfo import ZoneInfo

    return ZoneInfo(BERLIN)


@pytest.mark.parametrize(("change", "words"), [
    ({"cron": "0 25 * * *"}, "invalid cron expression"),
    ({"cron": "every day"}, "five fields"),
    ({"daily_at": "7pm"}, "HH:MM"),
    ({"weekly_at": {"weekday": "someday", "time": "02:00"}}, "weekday"),
    ({"every_minutes": 0}, "at least 1 minute"),
    ({"every_minutes": 0.5}, "at least 1 minute"),
    ({"every_hours": -1}, "at least 1 minute"),
    ({"daily_at": "02:00", "timezone": "Nowhere/City"}, "unknown time zone"),
    ({"daily_at": "02:00", "cron": "* * * * *"}, "only one of"),
    ({}, "say when the schedule is due"),
    ({"daily_at": "02:00", "dataset_ids": []}, "at least one training dataset"),
    ({"daily_at": "02:00", "dataset_ids": [999]}, "no dataset with id 999"),
    ({"daily_at": "02:00", "dataset_ids": ["EVAL"]}, "locked, never trained on"),
    ({"daily_at": "02:00", "dataset_ids": ["PENDING"]}, "not ready"),
    ({"daily_at": "02:00", "epochs": 0}, "epochs must be a whole number"),
    ({"daily_at": "02:00", "views": "sideways"}, "views must be one of"),
    ({"daily_at": "02:00", "lr": 1}, "lr must be a number from 1e-05 to 0.1"),
    ({"daily_at": "02:00", "start_from": "no-such-version"}, "start_from names no model version"),
])
def test_api_refuses_bad_schedules_with_a_reason(
    client: FlaskClient, settings: Settings, ready: int, change: dict[str, Any], words: str
) -> None:
    ids = {"EVAL": add_dataset(settings, "locked", role="evaluation"),
           "PENDING": add_dataset(settings, "pending", status="validating")}
    body = {"dataset_ids": [ready], **change}
    body["dataset_ids"] = [ids.get(i, i) for i in body["dataset_ids"]]
    response = client.post("/api/schedules", json=body)
    assert response.status_code == 400 and words in response.get_json()["error"], response.get_json()
    assert client.get("/api/schedules").get_json() == {"schedules": []}
    # The same refusals on a change leave the schedule as it was.
    sid = client.post("/api/schedules", json={"dataset_ids": [ready], "every_minutes": 30}).get_json()["id"]
    if change:
        response = client.patch(f"/api/schedules/{sid}", json=body)
        assert response.status_code == 400 and words in response.get_json()["error"]
    assert client.get(f"/api/schedules/{sid}").get_json()["spec"] == {"every_minutes": 30}


def test_writes_are_for_admins(client: FlaskClient, settings: Settings, fracture_env: dict[str, str],
                               ready: int) -> None:
    sid = client.post("/api/schedules", json={"dataset_ids": [ready], "every_hours": 1}).get_json()["id"]
    user = make_client(settings, token=add_user(fracture_env, "reader")["token"])
    assert user.get("/api/schedules").status_code == 200
    assert user.post("/api/schedules", json={"dataset_ids": [ready], "every_hours": 1}).status_code == 403
    assert user.patch(f"/api/schedules/{sid}", json={"enabled": False}).status_code == 403
    assert user.delete(f"/api/schedules/{sid}").status_code == 403
    assert user.post(f"/training/schedules/{sid}/delete").status_code == 403
    page = user.get("/training").get_data(as_text=True)
    assert "every hour" in page and "New schedule" not in page
    assert client.get(f"/api/schedules/{sid}").get_json()["enabled"] is True


def test_training_page_adds_edits_pauses_and_deletes(client: FlaskClient, settings: Settings, ready: int,
                                                    tiny_checkpoint: Path) -> None:
    form = {"name": "weeknights", "kind": "cron", "cron": "30 1 * * 1-5", "timezone": NEW_YORK,
            "dataset_ids": [str(ready)], "epochs": "2", "views": "identity", "interval": "24", "unit": "hours",
            "time": "02:00", "weekday": "0"}
    page = client.post("/training/schedules", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Schedule &#39;weeknights&#39; added: cron &#39;30 1 * * 1-5&#39; (America/New_York)" in page
    (row,) = client.get("/api/schedules").get_json()["schedules"]
    assert row["params"] == {"dataset_ids": [ready], "epochs": 2, "views": "identity"}
    page = client.get("/training").get_data(as_text=True)
    assert "wrists" in page and "epochs=2" in page and row["next_run_local"] in page and "EST" in page

    edited = client.post(f"/training/schedules/{row['id']}", data={**form, "kind": "every", "interval": "45",
                                                                   "unit": "minutes", "epochs": ""})
    assert edited.status_code == 302
    row = client.get(f"/api/schedules/{row['id']}").get_json()
    assert row["spec"] == {"every_minutes": 45} and row["params"] == {"dataset_ids": [ready], "views": "identity"}

    # A registered version to start from, chosen on the form; an empty choice clears it.
    with session_scope(settings.database_url) as session:
        origin = register_checkpoint(session, Storage(settings.storage_dir), tiny_checkpoint, name="origin").id
    assert f'<option value="{origin}" >origin</option>' in client.get("/training").get_data(as_text=True)
    client.post(f"/training/schedules/{row['id']}", data={**form, "start_from": str(origin), "lr": "0.0005"})
    row = client.get(f"/api/schedules/{row['id']}").get_json()
    assert row["params"]["start_from"] == origin and row["params"]["lr"] == 0.0005
    assert f'<option value="{origin}" selected>origin</option>' in client.get("/training").get_data(as_text=True)
    client.post(f"/training/schedules/{row['id']}", data={**form, "start_from": ""})
    assert "start_from" not in client.get(f"/api/schedules/{row['id']}").get_json()["params"]

    bad = client.post(f"/training/schedules/{row['id']}", data={**form, "time": "noon", "kind": "daily"},
                      follow_redirects=True).get_data(as_text=True)
    assert "HH:MM" in bad
    assert client.post(f"/training/schedules/{row['id']}/enabled", data={"enabled": "0"}).status_code == 302
    assert client.get(f"/api/schedules/{row['id']}").get_json()["enabled"] is False
    assert "Resume" in client.get("/training").get_data(as_text=True)
    client.post(f"/training/schedules/{row['id']}/enabled", data={"enabled": "1"})
    assert client.get(f"/api/schedules/{row['id']}").get_json()["enabled"] is True
    assert client.post(f"/training/schedules/{row['id']}/delete").status_code == 302
    assert client.get("/api/schedules").get_json() == {"schedules": []}
    no_dataset = client.post("/training/schedules", data={**form, "dataset_ids": []}, follow_redirects=True)
    assert "at least one training dataset" in no_dataset.get_data(as_text=True)


# ---------------------------------------------------------------- exactly once per due time


def due_schedule(settings: Settings, dataset_id: int, due: datetime, minutes: int = 60) -> int:
    """An every-`minutes` schedule whose next due time is `due`."""
    with session_scope(settings.database_url) as session:
        schedule = trainings.add_schedule(session, "hourly", Spec("every", interval_minutes=minutes),
                                          {"dataset_ids": [dataset_id], "epochs": 2})
        schedule.next_run_at = due
        return schedule.id


def counts(settings: Settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return (session.scalar(select(func.count(TrainingRun.id))) or 0,
                session.scalar(select(func.count(ScheduleFiring.id))) or 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The installation's settings on its SQLite database, or on a fresh migrated PostgreSQL one."""
    if request.param == "sqlite":
        return settings
    url = request.getfixturevalue("pg_url")
    migrate.upgrade(url)
    return replace(settings, database_url=url)


def test_two_ticks_for_one_due_time_start_one_run(db_settings: Settings) -> None:
    settings, ready = db_settings, add_dataset(db_settings, "wrists")
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3, minutes=10)  # three slots missed
    sid = due_schedule(settings, ready, due)
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        first = trainings.create_due_runs(session, now)
    with session_scope(settings.database_url) as session:
        second = trainings.create_due_runs(session, now)
        # A tick that read the schedule before the first committed still finds the due time taken.
        schedule = trainings.get_schedule(session, sid)
        schedule.next_run_at = due
        session.flush()
        stale = trainings.create_due_runs(session, now)
    assert len(first) == 1 and second == [] and stale == []
    assert counts(settings) == (1, 1)
    with session_scope(settings.database_url) as session:
        run = session.get(TrainingRun, first[0])
        assert run is not None and run.status == "queued" and run.schedule_id == sid
        assert run.params == {"dataset_ids": [ready], "epochs": 2}
        assert run.message == f"scheduled by 'hourly' for {due:%Y-%m-%d %H:%M} UTC"
        schedule = trainings.get_schedule(session, sid)
        # Missed slots are skipped: the next one keeps the phase and lies ahead.
        next_run = schedule.next_run_at.replace(tzinfo=UTC) if schedule.next_run_at else None
        assert next_run is not None and now < next_run <= now + timedelta(hours=1)
        assert (next_run - due) % timedelta(hours=1) == timedelta(0)


def test_two_threads_for_one_due_time_start_one_run(db_settings: Settings) -> None:
    settings, ready = db_settings, add_dataset(db_settings, "wrists")
    due_schedule(settings, ready, datetime.now(UTC) - timedelta(seconds=5))
    now, barrier, created, errors = datetime.now(UTC), threading.Barrier(4), [], []

    def tick() -> None:
        try:
            with session_scope(settings.database_url) as session:
                barrier.wait(timeout=10)
                created.extend(trainings.create_due_runs(session, now))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(created) == 1
    assert counts(settings) == (1, 1)


def test_a_schedule_whose_dataset_went_away_records_a_failed_run(settings: Settings, ready: int) -> None:
    due_schedule(settings, ready, datetime.now(UTC) - timedelta(seconds=5))
    with session_scope(settings.database_url) as session:
        dataset = session.get(Dataset, ready)
        assert dataset is not None
        dataset.status = "invalid"
    with session_scope(settings.database_url) as session:
        assert trainings.create_due_runs(session) == []  # nothing to send
        (run,) = session.scalars(select(TrainingRun)).all()
        assert run.status == "failed" and "not ready" in (run.error or "")


# ---------------------------------------------------------------- the real thing: beat + worker + redis


def start_beat(env: dict[str, str], logs: Any, name: str) -> Any:
    args = [str(VENV_BIN / "celery"), "-A", "worker.app", "beat", "--loglevel", "INFO",
            "--schedule", str(logs / f"{name}-schedule")]
    return start_proc(name, args, env, logs)


def ticks(proc: Any) -> int:
    """Ticks the worker has run (its whole log: log_text() is only the tail)."""
    return proc.log.read_text(errors="replace").count("Task schedules.tick[") // 2  # received + succeeded


def sent_ticks(proc: Any) -> int:
    """Ticks a beat has sent (a restarted beat appends to the same log)."""
    return proc.log.read_text(errors="replace").count("Sending due task schedules-tick")


@pytest.mark.slow
def test_beat_restarted_around_the_due_time_starts_exactly_one_run(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, tmp_path: Any
) -> None:
    env = {**fracture_env, "REDIS_URL": redis_url, "SCHEDULES_TICK_S": "1", "REAPER_INTERVAL_S": "3600"}
    settings = get_settings(env)
    dataset_id = add_dataset(settings, "wrists")
    logs = tmp_path / "logs"
    # Two beats (the second by mistake, with a schedule file of its own), each ticking every second.
    beats = [start_beat(env, logs, "beat-1"), start_beat(env, logs, "beat-2")]
    try:
        worker = celery_worker_proc.start(env, concurrency=2)  # two ticks may run at once
        wait_for(lambda: all(sent_ticks(b) >= 1 for b in beats) and ticks(worker) >= 2, 90,
                 "both beats' ticks to run on the worker")
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        sid = due_schedule(settings, dataset_id, due)
        time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 1))
        beats[0].stop()  # beat-1 restarted across the due time, with its schedule file
        beats[0] = start_beat(env, logs, "beat-1")
        restarted = sent_ticks(beats[0])
        wait_for(lambda: counts(settings)[0] >= 1, 60, "the scheduled run")
        wait_for(lambda: sent_ticks(beats[0]) >= restarted + 2, 90, "the restarted beat's ticks")
        before = ticks(worker)
        wait_for(lambda: ticks(worker) >= before + 2, 30, "the worker to run them")
    finally:
        for beat in beats:
            beat.stop()
    assert counts(settings) == (1, 1)
    with session_scope(settings.database_url) as session:
        (run,) = session.scalars(select(TrainingRun)).all()
        (firing,) = session.scalars(select(ScheduleFiring)).all()
        assert (run.schedule_id, run.status, firing.run_id) == (sid, "queued", run.id)
        assert firing.due_at.replace(tzinfo=UTC) == due
    # Sent once, after the commit: one message waits on the trainer's queue (no trainer runs here).
    with redis.Redis.from_url(redis_url) as r:
        assert r.llen("training") == 1
    dispose_engines()
