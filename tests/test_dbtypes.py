"""UTCDateTime on real databases: what is written comes back aware UTC, on SQLite (no zones) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import select

from fracture import migrate
from fracture.db import get_engine, session_scope
from fracture.dbtypes import as_utc
from fracture.models import Job, Schedule

TOKYO = timezone(timedelta(hours=9))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database; PostgreSQL's connections set to a zone other than UTC, so it hands back +09:00."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fracture.sqlite'}"
    else:
        url = str(request.getfixturevalue("pg_url")) + "?options=-c%20timezone%3DAsia/Tokyo"
    migrate.upgrade(url)
    yield url
    get_engine(url).dispose()  # its own URL: pg_url's teardown closes only the engine of the plain one


def test_datetimes_come_back_aware_utc_whatever_was_written(db_url: str) -> None:
    noon_tokyo = datetime(2024, 3, 1, 12, 0, tzinfo=TOKYO)
    naive = datetime(2024, 3, 1, 5, 30)  # taken to be UTC
    with session_scope(db_url) as session:
        session.add(Schedule(name="nightly", interval_minutes=60, next_run_at=noon_tokyo, last_run_at=naive))
    with session_scope(db_url) as session:
        row = session.scalars(select(Schedule)).one()
        assert row.next_run_at == datetime(2024, 3, 1, 3, 0, tzinfo=UTC) and row.next_run_at.tzinfo is UTC
        assert row.last_run_at == datetime(2024, 3, 1, 5, 30, tzinfo=UTC) and row.last_run_at.tzinfo is UTC
        assert row.created_at.tzinfo is UTC  # a default (utcnow) too
        # A bound value in a comparison is made UTC first: the same instant in another zone finds the row.
        assert session.scalars(select(Schedule.id).where(Schedule.next_run_at == noon_tokyo)).one() == row.id
        assert session.scalars(select(Schedule.id).where(
            Schedule.next_run_at > datetime(2024, 3, 1, 11, 59, tzinfo=TOKYO))).one() == row.id


def test_aggregates_keep_the_type(db_url: str) -> None:
    """max() over a datetime column (the reaper's last result) comes back aware too."""
    from sqlalchemy import func

    with session_scope(db_url) as session:
        session.add_all([Job(name="a", created_at=datetime(2024, 1, 1, tzinfo=UTC)),
                         Job(name="b", created_at=datetime(2024, 1, 2, 9, tzinfo=TOKYO))])
    with session_scope(db_url) as session:
        latest = session.scalar(select(func.max(Job.created_at)))
    assert latest == datetime(2024, 1, 2, 0, 0, tzinfo=UTC) and latest.tzinfo is UTC


def test_as_utc() -> None:
    assert as_utc(datetime(2024, 1, 1, 9, tzinfo=TOKYO)) == datetime(2024, 1, 1, 0, tzinfo=UTC)
    assert as_utc(datetime(2024, 1, 1, 9)).tzinfo is UTC
