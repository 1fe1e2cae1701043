"""Column types of the core's own: a DateTime that is always aware UTC, on every database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that writes UTC and reads back aware UTC datetimes.

    SQLite keeps no zone and hands timestamps back naive; PostgreSQL hands them back in the connection's zone. Both
    come back here as UTC, so no caller fixes up what it reads. A naive value written is taken to be UTC already.
    The column in the database stays what the migrations create (`DateTime(timezone=True)`).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive one is taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
