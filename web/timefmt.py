"""Timestamps as the API and the pages show them: ISO 8601, always with their UTC offset."""

from __future__ import annotations

from datetime import UTC, datetime

import marshmallow as ma


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def iso(value: datetime | None) -> str | None:
    value = aware(value)
    return value.isoformat() if value is not None else None


class Timestamp(ma.fields.DateTime):
    """A datetime field that dumps UTC-aware ISO 8601 (null when unset)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(allow_none=True, **kwargs)  # type: ignore[arg-type]

    def _serialize(self, value: object, attr: str | None, obj: object, **kwargs: object) -> str | None:
        return iso(value) if isinstance(value, datetime) else None
