"""Beat while a task runs: a daemon thread records on the task's row that its worker is alive.

The reaper (worker/reaper.py) fails a running training, evaluation or validation whose beats stopped: the worker
was killed. The beats come from a thread of their own, so a long epoch or a long decode does not silence them;
only a dead process does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from fracture.config import Settings
from fracture.db import session_scope

log = logging.getLogger(__name__)


@contextmanager
def beating(settings: Settings, beat: Callable[[Session], None]) -> Iterator[None]:
    """Call `beat(session)` (a core module's beat function) every settings.heartbeat_interval_s until the block ends.

    The first beat is the caller's (the core's start function writes one); a beat that fails (a busy database) is
    logged and tried again at the next interval.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(max(0.1, settings.heartbeat_interval_s)):
            try:
                with session_scope(settings.database_url) as session:
                    beat(session)
            except Exception:  # noqa: BLE001  (a missed beat is retried; the reaper allows several)
                log.warning("heartbeat not recorded; trying again in %s s", settings.heartbeat_interval_s,
                            exc_info=True)

    thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
