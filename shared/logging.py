"""Structured logs: one JSON object per line, carrying the job, worker and request it concerns.

Entry points call `configure_logging()` once. Context travels in context variables, so any
logger anywhere picks it up without being passed ids:

    with log_context(job_id=job.id, request_id=job.request_id):
        logger.info("job started")   # {"msg": "job started", "job_id": "...", "request_id": "..."}

The worker id is process-wide (`set_worker_id`), since a worker process is one worker; threads
that a job starts see it too. `install_request_id(app)` gives every Flask request an id, taken
from a well-formed `X-Request-ID` header or generated, and returns it in the response.

(The module shares its name with the standard library's `logging`; inside the package it is
always imported as `shared.logging`, and absolute imports keep the two apart.)
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is logged verbatim, so only a short, plain token is accepted.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
FORMATS = ("json", "text")

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("kiln_job_id", default=None)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("kiln_request_id", default=None)
_worker_id: str | None = None

CONTEXT_FIELDS = ("job_id", "worker_id", "request_id")
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged too.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def set_worker_id(worker_id: str | None) -> None:
    """Name this process's worker on every log line from now on."""
    global _worker_id
    _worker_id = worker_id


def current_request_id() -> str | None:
    return _request_id.get()


def current_job_id() -> str | None:
    return _job_id.get()


@contextlib.contextmanager
def log_context(*, job_id: str | None = None, request_id: str | None = None) -> Iterator[None]:
    """Within the block, log lines carry `job_id` / `request_id` (those given)."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Puts the current job, worker and request ids on each record (None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (("job_id", _job_id.get()), ("worker_id", _worker_id),
                            ("request_id", _request_id.get())):
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, msg, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in entry and name not in CONTEXT_FIELDS:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The human format, with whichever context ids are set appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                           if getattr(record, name, None) is not None)
        return f"{line} [{context}]" if context else line


def configure_logging(level: str | None = None, fmt: str | None = None, stream: Any = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `fmt`, at `level`; returns the handler.

    Args:
        level: a level name; default `KILN_LOG_LEVEL`, else INFO.
        fmt: `json` or `text`; default `KILN_LOG_FORMAT`, else json.
        stream: where lines go; default stderr.

    Raises:
        ValueError: the level or format is not one that exists.
    """
    level = (level or os.environ.get("KILN_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("KILN_LOG_FORMAT") or "json").lower()
    if fmt not in FORMATS:
        raise ValueError(f"KILN_LOG_FORMAT must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"KILN_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a well-formed request id, else None."""
    return value if value and REQUEST_ID_PATTERN.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def install_request_id(app: Any) -> None:
    """Give each request of Flask `app` a request id: logged on every line, echoed in the response."""
    from flask import g, request

    @app.before_request
    def _bind_request_id() -> None:
        request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        g.kiln_request_id = request_id
        g.kiln_request_id_token = _request_id.set(request_id)

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        request_id = g.get("kiln_request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.teardown_request
    def _unbind_request_id(_: BaseException | None) -> None:
        token = g.pop("kiln_request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:  # reset from another context (a streamed response): just clear it
                _request_id.set(None)
