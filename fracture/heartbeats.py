"""When work a trainer runs (a training run, an evaluation, a dataset validation) counts as dead, and why.

The running task writes a heartbeat on its row every HEARTBEAT_INTERVAL_S (trainer/heartbeat.py); the state module
that owns the row asks `stopped_worker` and fails the row with its sentence. A beat older than HEARTBEAT_STALE_S
means the worker process is gone (SIGKILL, out of memory, a restarted container): a live one beats from a thread of
its own, whatever the work is doing.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def stopped_worker(last_beat: datetime | None, now: datetime, stale_s: int) -> str | None:
    """Why work whose last heartbeat was at `last_beat` is dead (its worker stopped), or None while it is alive."""
    if last_beat is None:
        return None  # never started (still queued): a long queue is not a dead worker
    silent = now - last_beat
    if silent <= timedelta(seconds=stale_s):
        return None
    return (f"the worker running it stopped (killed, out of memory or restarted): no sign of life for "
            f"{int(silent.total_seconds())} s since {last_beat:%Y-%m-%d %H:%M:%S} UTC")
