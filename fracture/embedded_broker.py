"""kombu's SQLAlchemy transport tuned for the embedded one-machine broker on SQLite.

Two changes: a shorter polling interval (kombu polls every 1 s, which with acks_late and a prefetch of one
adds up to a second of idle time per task), and WAL + a busy timeout on the broker's SQLite file so
web, workers and beat can share it without "database is locked" errors.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import event

POLLING_INTERVAL_S = 0.1


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Channel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Any:
        engine = super()._engine_from_config()
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _pragmas)
        return engine


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = POLLING_INTERVAL_S


def install() -> None:
    """Make `sqla+...` broker URLs use this transport in this process."""
    for alias in ("sqla", "sqlalchemy"):
        TRANSPORT_ALIASES[alias] = f"{__name__}:Transport"
