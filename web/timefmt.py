"""Timestamps in the API's answers: ISO 8601 with their UTC offset (the database hands them back aware, as UTC:
fracture.dbtypes.UTCDateTime)."""

from __future__ import annotations

from datetime import datetime

import marshmallow as ma


class Timestamp(ma.fields.DateTime):
    """A datetime field that dumps ISO 8601 with its offset (null when unset)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(allow_none=True, **kwargs)  # type: ignore[arg-type]

    def _serialize(self, value: object, attr: str | None, obj: object, **kwargs: object) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None


class Lifetime(ma.Schema):
    """When a job, a training run or an evaluation was created, started and finished (null until then)."""

    created_at = Timestamp()
    started_at = Timestamp()
    finished_at = Timestamp()
