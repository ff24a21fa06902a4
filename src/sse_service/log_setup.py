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

from .logs import _ACCESS_LOGGER, SafeRecords, _clean_args
from .logs_json import JsonLines

__all__ = ["ACCESS_FORMAT", "TEXT_FORMAT", "LoopFlushedHandler", "TextLines", "access_line",
           "lighten_records", "log_config"]


def lighten_records() -> None:
    """Stop every log record from recording its call site, thread and process
    (the optimisations of the logging HOWTO): no format here prints them, and
    looking up the call site alone costs more than a quarter of an access line."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class LoopFlushedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, inside a running event loop, writes once at the
    loop's next turn rather than once per record: under load one write carries
    every line of a turn, and a line still leaves within the turn it was logged
    in.  The lines wait here, not in the stream, so that holds for a stream
    that writes through (``PYTHONUNBUFFERED``, as in the image), where each
    line would be a syscall of its own.  Outside a loop (at start-up, in other
    threads, at exit) a line is written and flushed at once, after any still
    waiting, as logging's own handler would."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._pending: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """``line`` written as :meth:`emit` writes a formatted record."""
        self.acquire()
        try:
            lines = self._lines
            lines.append(line + self.terminator)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None or len(lines) >= _MAX_WAITING:
                self._write_out()
            elif self._pending is not loop:
                self._pending = loop
                loop.call_soon(self._flush_now)
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            self.release()

    def flush(self) -> None:
        """Write what waits, now (logging calls this at exit)."""
        self.acquire()
        try:
            self._write_out()
        finally:
            self.release()

    def _flush_now(self) -> None:
        self.acquire()
        try:
            self._pending = None
            self._write_out()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "writing log lines failed"}))
        finally:
            self.release()

    def _write_out(self) -> None:
        lines = self._lines
        if lines:
            text = lines[0] if len(lines) == 1 else "".join(lines)
            lines.clear()
            self.stream.write(text)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()


#: Lines a turn may leave waiting; more are written at once (a turn that logs
#: this much gains nothing from waiting).
_MAX_WAITING = 256


#: ",000" to ",999": a stamp's milliseconds, formatted once.
_MILLIS = tuple(f",{msecs:03d}" for msecs in range(1000))

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
        return self.stamp(record.created, int(record.msecs))

    def stamp(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
        return self._stamp + _MILLIS[msecs] if 0 <= msecs < 1000 else f"{self._stamp},{msecs:03d}"

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if (self._fmt == ACCESS_FORMAT and record.name == _ACCESS_LOGGER
                and isinstance(args, tuple) and len(args) == 5
                and not record.exc_info and not record.stack_info):
            # ACCESS_FORMAT written out: an access line is on every request's
            # path, and its record's message is never part of it.
            return self.access_line(self.formatTime(record), *args)
        return super().format(record)

    @staticmethod
    def access_line(stamp: str, client: object, method: object, path: object,
                    version: object, status: object) -> str:
        return f'{stamp} INFO access: {client} "{method} {path} HTTP/{version}" ' \
               f'{_status_line(status)}'

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


def access_line(logger: logging.Logger, client: str, method: str, target: str,
                version: str, status: int) -> None:
    """The access line of a request answered on the socket, as uvicorn logs one.

    While the access logger is as :func:`log_config` sets it up for text (one
    :class:`LoopFlushedHandler`, the :data:`ACCESS_FORMAT`, one
    :class:`~.logs.SafeRecords`, no filter of its own), the line is written
    straight to that handler, made safe as the filter would make it, with no
    log record: a record and its way through logging cost four fifths of the
    line.  Any other set-up (JSON lines, added handlers or filters) gets the
    record, as from uvicorn."""
    handlers = logger.handlers
    if len(handlers) == 1 and not logger.filters and logger.isEnabledFor(logging.INFO):
        handler, = handlers
        formatter = handler.formatter
        filters = handler.filters
        if (type(handler) is LoopFlushedHandler and type(formatter) is TextLines
                and formatter._fmt == ACCESS_FORMAT and handler.level <= logging.INFO
                and len(filters) == 1 and type(filters[0]) is SafeRecords):
            # The method and version are the parser's (tokens it checked) and
            # the status is an int: only the client and target need cleaning.
            (peer, path), _ = _clean_args((client, target))
            now = time.time()
            stamp = formatter.stamp(now, int((now - int(now)) * 1000))
            handler.write_line(formatter.access_line(stamp, peer, method, path, version, status))
            return
    logger.info('%s - "%s %s HTTP/%s" %d', client, method, target, version, status)


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
