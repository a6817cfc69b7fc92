"""Logging for every imgq process: one event per line on standard error, as text (the default, for a terminal) or as
JSON (IMGQ_LOG_FORMAT=json, for a log collector), each with its time, level, logger and the process's role.

The work a line belongs to travels in a context variable: `log_context(job_id=..., chunk_id=...)` binds fields for
the code that runs inside it, `bind(attempt=...)` adds to them until that block ends, and the filter on the one
handler copies them onto every record logged there (CONTEXT_FIELDS: job id, chunk id, attempt, request id). A new
thread starts with an empty context: code that hands work to a thread runs it in `contextvars.copy_context()` when
its lines should carry the fields (worker/scoring.py does).

`configure_logging(log_format, role)` is called by each entry point (the CLI's commands, `web.wsgi.create`, the
training process) and, in a Celery worker, from Celery's `setup_logging` signal in every process of the pool, which
also keeps Celery from installing handlers of its own (worker/task_logs.py). Importing this module configures
nothing.

No line carries a payload: messages name things (jobs, chunks, items, models), never vectors, images or tokens.
"""
from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import MappingProxyType

CONTEXT_FIELDS = ("job_id", "chunk_id", "attempt", "request_id")
QUIET_LOGGERS = {"alembic.runtime.plugins": logging.WARNING,  # a line per plugin at every start
                 "azure": logging.WARNING}  # azure-core (adlfs, az://) logs every request and response at INFO
ROLES = ("web", "worker", "maintenance", "beat", "trainer", "flower", "cli")
HANDLER_NAME = "imgq"

_context: contextvars.ContextVar[MappingProxyType] = contextvars.ContextVar("imgq_log_context",
                                                                             default=MappingProxyType({}))


def current_context() -> dict:
    """The fields bound where this runs (a copy)."""
    return dict(_context.get())


def enter_context(**fields) -> contextvars.Token:
    """Bind `fields` (None values are left out) on top of the current ones; `exit_context(token)` undoes it. For
    callbacks that come in pairs (Celery's task_prerun/postrun, Flask's before/teardown request)."""
    bound = {k: v for k, v in fields.items() if v is not None}
    return _context.set(MappingProxyType({**_context.get(), **bound}))


def empty_context() -> contextvars.Token:
    """Start from no fields at all (a test, or a task in a thread where earlier work bound some and never
    unbound them); `exit_context(token)` puts the earlier ones back."""
    return _context.set(MappingProxyType({}))


def exit_context(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields) -> Iterator[None]:
    """Every line logged inside carries `fields`, besides those already bound."""
    token = enter_context(**fields)
    try:
        yield
    finally:
        exit_context(token)


def bind(**fields) -> None:
    """Add `fields` to the current context, until the `log_context` (or `enter_context`) around it ends."""
    enter_context(**fields)


class ContextFilter(logging.Filter):
    """Copies the process's role and the bound context onto each record; a field given explicitly through `extra`
    wins."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        for key, value in _context.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """`2024-05-01 12:00:00,123 INFO worker worker.run_chunk: message [job_id=... chunk_id=3]`."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(role)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "role"):
            record.role = "-"
        line = super().formatMessage(record)
        bound = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__)
        return f"{line} [{bound}]" if bound else line


def _json_value(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp (ISO 8601, UTC), level, logger, pid, message, role, the bound context and
    any `extra` fields; a traceback as `exc_info`."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class TimestampFirst(JsonFormatter):
        def process_log_record(self, log_record: dict) -> dict:
            return {"timestamp": log_record.pop("timestamp", None), **log_record}

    # "data": Celery's task trace hands its whole log context (args, return value) as an extra; the message says
    # what is worth saying. "taskName": asyncio's, always empty here.
    return TimestampFirst(["levelname", "name", "process", "message"], timestamp=True,
                          rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
                          reserved_attrs=[*RESERVED_ATTRS, "data", "taskName", "color_message"],
                          json_default=_json_value, json_ensure_ascii=False)


def formatter_for(log_format: str) -> logging.Formatter:
    return json_formatter() if log_format == "json" else TextFormatter()


def configure_logging(log_format: str, role: str, level: int | str = logging.INFO, stream=None) -> logging.Handler:
    """Send every record to `stream` (the process's real standard error: Celery may have put a logger in place of
    sys.stderr) as `log_format` ("text" or "json"), tagged with `role`; replaces the handler an earlier call installed
    (a Celery pool process configures again after its fork). Returns the handler."""
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}")
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(ContextFilter(role))
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)  # a library's warning is a line in the same format, not a loose block of text
    return handler
