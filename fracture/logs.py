"""One log line per event, as text or as one JSON object (LOG_FORMAT=json), with the same fields in the web, the
workers, the trainer, beat and the DICOM node: ts, level, logger, process, pid, message, and the ids of what the line is
about (job, run, evaluation, dataset, delivery; the Celery task) when they are known.

The ids come from a context variable that the Celery task signals and the web's request hooks set (`bind`), or
from a record's own `extra`; a filter on the handler copies them onto every record.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

from fracture.config import Settings, get_settings

FORMATS = ("text", "json")
# The ids a line may carry, in the order the text format prints them.
IDS = ("job_id", "run_id", "evaluation_id", "dataset_id", "delivery_id", "task_id", "task_name")
_NO_IDS: Mapping[str, object] = {}
_ids: ContextVar[Mapping[str, object]] = ContextVar("fracture_log_ids", default=_NO_IDS)
# A LogRecord's own attributes: anything else on a record came from `extra` and goes into the JSON object.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "fracture_process", "color_message", *IDS}


def bind(**ids: object) -> Token[Mapping[str, object]]:
    """Add `ids` (those not None) to the ids of every line logged from this context on; `unbind` the token."""
    return _ids.set({**_ids.get(), **{k: v for k, v in ids.items() if v is not None}})


def unbind(token: Token[Mapping[str, object]]) -> None:
    """Go back to the ids before `bind` returned `token`."""
    _ids.reset(token)


def clear() -> None:
    """Forget every id bound in this context (the end of a web request, of a task)."""
    _ids.set(_NO_IDS)


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    """Log with `ids` inside the block."""
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Put the process's name and the context's ids on each record (a record's own `extra` ids win)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.fracture_process = self.process
        context = _ids.get()
        for name in IDS:
            if getattr(record, name, None) is None:
                setattr(record, name, context.get(name))
        return True


def _ts(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, process, message, the ids known, the record's
    `extra` fields, exc_info as text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _ts(record), "level": record.levelname, "logger": record.name,
                                "process": getattr(record, "fracture_process", None), "pid": record.process,
                                "message": record.getMessage()}
        line.update({name: value for name in IDS if (value := getattr(record, name, None)) is not None})
        line.update({k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`ts LEVEL process/OS-process logger: message [job_id=... task_id=...]` (the OS process as Celery names it:
    MainProcess, ForkPoolWorker-3), the traceback below when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        ids = " ".join(f"{name}={value}" for name in IDS if (value := getattr(record, name, None)) is not None)
        return (f"{_ts(record)} {record.levelname} {getattr(record, 'fracture_process', '-')}/{record.processName} "
                f"{record.name}: {record.getMessage()}{f' [{ids}]' if ids else ''}")


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of LOG_FORMAT `log_format` ("text" or "json")."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(settings: Settings, process: str, level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send this process's logs to stderr (or `stream`) in settings.log_format, as `process` ("web", "worker",
    "trainer", "beat", "dicom-node"); gunicorn's own loggers, which do not propagate, get the same format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    handler.addFilter(ContextFilter(process))
    handler.fracture = True  # type: ignore[attr-defined]  # ours: replaced, never doubled, by another configure
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "fracture", False)] + [handler]
    root.setLevel(level)
    for name in ("gunicorn.error", "gunicorn.access"):
        adopt(logging.getLogger(name), settings, process)


def adopt(logger: logging.Logger, settings: Settings, process: str) -> None:
    """Give `logger`'s own handlers (a library's logger that does not propagate: gunicorn's) our format and ids."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(settings.log_format))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter(process))


# ---------------------------------------------------------------- Celery


def _task_ids(task: Any, args: tuple[Any, ...] | None, kwargs: Mapping[str, Any] | None) -> dict[str, object]:
    """The ids among a task's arguments, by their parameter names (job_id, run_id, ...)."""
    try:
        arguments = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {})).arguments
    except (TypeError, ValueError):
        arguments = dict(kwargs or {})
    return {name: arguments[name] for name in IDS if name in arguments}


def use_in_celery(worker_process: str) -> None:
    """Make a Celery program log our way: its logging set up by `configure` (Celery's `setup_logging` signal, so
    Celery leaves the root logger alone), named `worker_process` in a worker and "beat" in beat; each task's lines
    carry its id, name and the ids among its arguments. Call from the app's entry module only."""
    from celery import signals

    process = {"name": "beat"}  # a worker announces itself (celeryd_init) before it sets up logging; beat does not

    def named(**_: Any) -> None:
        process["name"] = worker_process

    def setup(loglevel: int | str | None = None, **_: Any) -> None:
        configure(get_settings(), process["name"], level=loglevel or logging.INFO)

    def prerun(task_id: str | None = None, task: Any = None, args: tuple[Any, ...] | None = None,
               kwargs: Mapping[str, Any] | None = None, **_: Any) -> None:
        _ids.set({"task_id": task_id, "task_name": getattr(task, "name", None), **_task_ids(task, args, kwargs)})

    def postrun(**_: Any) -> None:
        clear()

    signals.celeryd_init.connect(named, weak=False)
    signals.setup_logging.connect(setup, weak=False)
    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
