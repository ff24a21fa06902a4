"""Logging set-up: where lines go and how they look, as text or as JSON.

:func:`log_config` is the ``dictConfig`` of ``sse-service serve``: one line per
record on stderr, the access log on stdout, every handler behind
:class:`~.logs.SafeRecords` (no token in any line).  Handlers flush once per
turn of the event loop (:class:`LoopFlushedHandler`), and
:func:`lighten_records` drops what no format here prints from every record.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from typing import Any

from .logs import _ACCESS_LOGGER, SafeRecords
from .logs_json import JsonLines

__all__ = ["ACCESS_FORMAT", "TEXT_FORMAT", "LoopFlushedHandler", "TextLines", "lighten_records",
           "log_config"]


def lighten_records() -> None:
    """Stop every log record from recording its call site, thread and process
    (the optimisations of the logging HOWTO): no format here prints them, and
    looking up the call site alone costs more than a quarter of an access line."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class LoopFlushedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, inside a running event loop, flushes once at the
    loop's next turn rather than after every record: under load one write
    carries every line of a turn (an access line is a syscall otherwise), and
    a line still leaves within the turn it was logged in.  Outside a loop (at
    start-up, in other threads, at exit) it flushes at once, as logging's own."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: asyncio.AbstractEventLoop | None = None

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        if self._pending is loop:
            return
        self._pending = loop
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self.acquire()
        try:
            self._pending = None
            super().flush()
        finally:
            self.release()


#: The text format of a record, and of an access line (uvicorn's fields).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FORMAT = '%(asctime)s INFO access: %(client_addr)s "%(request_line)s" %(status_code)s'
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}


class TextLines(logging.Formatter):
    """The text format: logging's own, with the time stamp rendered once a second,
    and uvicorn's access-log fields (``client_addr``, ``request_line``,
    ``status_code`` as ``"200 OK"``) made from an access record's arguments, as
    uvicorn's ``AccessFormatter`` makes them but without copying the record
    (each access record has this one handler)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if (self._fmt == ACCESS_FORMAT and record.name == _ACCESS_LOGGER
                and isinstance(args, tuple) and len(args) == 5
                and not record.exc_info and not record.stack_info):
            # ACCESS_FORMAT written out: an access line is on every request's
            # path, and its record's message is never part of it.
            client, method, path, version, status = args
            return (f'{self.formatTime(record)} INFO access: {client} '
                    f'"{method} {path} HTTP/{version}" {_status_line(status)}')
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            client_addr, method, full_path, http_version, status_code = args
            record.client_addr = client_addr
            record.request_line = f"{method} {full_path} HTTP/{http_version}"
            record.status_code = _status_line(status_code)
        return super().formatMessage(record)


def _status_line(status: object) -> str:
    code = status if isinstance(status, int) else int(str(status))
    return _STATUS_LINES.get(code) or f"{code} "


def log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service; ``fmt`` is
    ``SSE_LOG_FORMAT``: ``text`` or ``json``."""
    formatters: dict[str, Any] = {
        "default": {"()": TextLines, "fmt": TEXT_FORMAT},
        "access": {"()": TextLines, "fmt": ACCESS_FORMAT},
    }
    if fmt == "json":
        formatters = {"default": {"()": JsonLines}, "access": {"()": JsonLines}}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"safe": {"()": SafeRecords}},
        "formatters": formatters,
        "handlers": {
            "default": {"class": "sse_service.log_setup.LoopFlushedHandler", "formatter": "default",
                        "filters": ["safe"], "stream": "ext://sys.stderr"},
            "access": {"class": "sse_service.log_setup.LoopFlushedHandler", "formatter": "access",
                       "filters": ["safe"], "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level.upper()},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
