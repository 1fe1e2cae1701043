"""Turn due retraining schedules into queued training runs and send them: the body of `schedules.tick`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fracture import trainings
from fracture.config import Settings
from fracture.db import session_scope


def run_due_schedules(
    settings: Settings, send_retrain: Callable[[int], None], now: datetime | None = None
) -> list[int]:
    """Create a run for each due schedule (fracture.trainings), then send each one; return the run ids."""
    with session_scope(settings.database_url) as session:
        created = trainings.create_due_runs(session, now)
    # Sent after the commit, so the trainer always finds the row it is told about.
    for run_id in created:
        send_retrain(run_id)
    return created
