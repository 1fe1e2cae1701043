"""gunicorn's logger with LOG_FORMAT's lines: `gunicorn --logger-class web.gunicorn_logs.Logger`, so that the
master's own lines (starting, booting a worker, exiting), written before any worker imports the app, match the
app's (fracture.logs)."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from fracture import logs
from fracture.config import get_settings


class Logger(GunicornLogger):
    """gunicorn's error and access logs, formatted by fracture.logs (text, or JSON under LOG_FORMAT=json)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        settings = get_settings()
        for logger in (self.error_log, self.access_log):
            logs.adopt(logger, settings, "web")
