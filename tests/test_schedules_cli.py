"""`fracture schedules` through click: add, list (table and JSON), pause, resume, delete on a real installation, and
bad input refused with the core's reasons and a non-zero exit, writing nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from installation import add_dataset

from fracture.config import Settings
from launcher.cli import main


def fracture(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["schedules", *args], env=env, input=input, catch_exceptions=False)


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    done = fracture(env, "list", "--json")
    assert done.exit_code == 0, done.output
    rows: list[dict[str, Any]] = json.loads(done.output)["schedules"]
    return rows


def test_add_list_pause_resume_delete(fracture_env: dict[str, str], settings: Settings) -> None:
    wrists = add_dataset(settings, "wrists")
    add_dataset(settings, "ankles")
    assert "no schedules" in fracture(fracture_env, "list").output

    added = fracture(fracture_env, "add", "--name", "nightly", "--dataset", "wrists", "--dataset", "ankles",
                     "--daily-at", "02:30", "--timezone", "Europe/Berlin", "--epochs", "3", "--augment", "strong")
    assert added.exit_code == 0, added.output
    assert "added schedule #1 'nightly': daily at 02:30 (Europe/Berlin), next " in added.output
    weekly = fracture(fracture_env, "add", "--dataset", str(wrists), "--weekly-at", "fri 23:15", "--paused")
    assert weekly.exit_code == 0 and "weekly on Friday at 23:15 (UTC), paused" in weekly.output

    nightly, second = listed(fracture_env)
    assert nightly["spec"] == {"daily_at": "02:30"} and nightly["timezone"] == "Europe/Berlin"
    assert nightly["params"] == {"dataset_ids": [1, 2], "epochs": 3, "augment": "strong"}
    assert datetime.fromisoformat(nightly["next_run_at"]) > datetime.now(UTC) and nightly["enabled"] is True
    assert second["spec"] == {"weekly_at": {"weekday": 4, "time": "23:15"}} and second["enabled"] is False
    assert second["name"] == "retrain" and second["next_run_at"] is None

    table = fracture(fracture_env, "list").output.splitlines()
    assert table[0].split() == ["ID", "NAME", "DATASETS", "CADENCE", "NEXT", "PAUSED", "LAST", "RUN"]
    assert "wrists, ankles" in table[1] and "daily at 02:30 (Europe/Berlin)" in table[1] and "never" in table[1]
    assert table[2].split()[-2:] == ["yes", "never"] and " - " in table[2]

    assert fracture(fracture_env, "pause", "1").exit_code == 0
    assert fracture(fracture_env, "resume", "2").output.startswith("schedule #2 'retrain' resumed: next ")
    nightly, second = listed(fracture_env)
    assert (nightly["enabled"], nightly["next_run_at"]) == (False, None)
    assert second["enabled"] is True and datetime.fromisoformat(second["next_run_at"]) > datetime.now(UTC)

    kept = fracture(fracture_env, "delete", "1", input="n\n")
    assert kept.exit_code == 1 and [r["id"] for r in listed(fracture_env)] == [1, 2]
    gone = fracture(fracture_env, "delete", "1", "--yes")
    assert gone.exit_code == 0 and "schedule #1 'nightly' deleted" in gone.output
    assert [r["id"] for r in listed(fracture_env)] == [2]


@pytest.mark.parametrize(("args", "words"), [
    (["--dataset", "nosuch", "--daily-at", "02:00"], "no dataset named 'nosuch'"),
    (["--dataset", "999", "--daily-at", "02:00"], "there is no dataset with id 999"),
    (["--dataset", "EVAL", "--daily-at", "02:00"], "locked, never trained on"),
    (["--dataset", "PENDING", "--daily-at", "02:00"], "not ready"),
    (["--dataset", "READY", "--cron", "0 25 * * *"], "invalid cron expression"),
    (["--dataset", "READY", "--cron", "every day"], "five fields"),
    (["--dataset", "READY", "--daily-at", "7pm"], "HH:MM"),
    (["--dataset", "READY", "--weekly-at", "someday 02:00"], "weekday"),
    (["--dataset", "READY", "--every-minutes", "0"], "at least 1 minute"),
    (["--dataset", "READY", "--daily-at", "02:00", "--timezone", "Nowhere/City"], "unknown time zone"),
    (["--dataset", "READY", "--daily-at", "02:00", "--cron", "* * * * *"], "only one of"),
    (["--dataset", "READY"], "say when the schedule is due"),
    (["--dataset", "READY", "--daily-at", "02:00", "--epochs", "0"], "0 is not in the range 1<=x<=1000"),
    (["--dataset", "READY", "--daily-at", "02:00", "--views", "sideways"], "'sideways' is not one of"),
])
def test_bad_input_is_refused_with_a_reason(
    fracture_env: dict[str, str], settings: Settings, args: list[str], words: str
) -> None:
    ids = {"READY": add_dataset(settings, "wrists"), "EVAL": add_dataset(settings, "locked", role="evaluation"),
           "PENDING": add_dataset(settings, "pending", status="validating")}
    done = fracture(fracture_env, "add", *[str(ids.get(a, a)) for a in args])
    assert done.exit_code != 0 and words in done.output, done.output
    assert "Traceback" not in done.output
    assert listed(fracture_env) == []


def test_an_unknown_schedule_is_refused(fracture_env: dict[str, str]) -> None:
    for command in ("pause", "resume", "delete"):
        done = fracture(fracture_env, command, "7", "--yes") if command == "delete" else fracture(
            fracture_env, command, "7")
        assert done.exit_code == 1 and "there is no schedule with id 7" in done.output
