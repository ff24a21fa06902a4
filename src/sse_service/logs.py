"""Logging set-up: one line per record, as text or as JSON, and no token in any line.

Browsers that cannot send headers put the token in ``?token=``; uvicorn's
access log prints the whole request line, so the value is masked first.

Every value a caller logs that came from outside goes through :func:`escape`
at the call site.  :class:`SafeRecords` is the net under those call sites,
for uvicorn's own records (the access log's client address and path) and for
anything a call site missed: it masks tokens, escapes control characters and
line separators and bounds the length of every string argument, and when a
record's formatted message would still hold a line break (an exception or
other object among the arguments) it replaces the message by its escaped text.
Tracebacks (``exc_info``) are left as they are: they are multi-line by nature.

With ``SSE_LOG_FORMAT=json`` each record is one JSON object instead
(:mod:`.logs_json`), behind the same filter.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "LoopFlushedHandler",
    "MAX_ARG_CHARS",
    "MAX_LOGGED_CHARS",
    "SafeRecords",
    "escape",
    "install_filter",
    "lighten_records",
    "log_config",
    "redact",
]

#: The longest rendering of one untrusted value in a log line.
MAX_LOGGED_CHARS = 200
#: The filter's bound on one string argument.  Above the longest result of
#: ``escape()`` (each of its 200 characters escaped to six, plus the length
#: note), so the filter never cuts what a call site already escaped.
MAX_ARG_CHARS = 2048
#: The bound on a whole message the filter had to rewrite.
MAX_MESSAGE_CHARS = 4 * MAX_ARG_CHARS
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CLEANED = "_sse_safe"
# uvicorn's access formatter unpacks these records' arguments itself.
_ACCESS_LOGGER = "uvicorn.access"


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\u{ord(char):04x}")


def escape(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """An untrusted value made safe for one log line: control characters, line
    separators and lone surrogates escaped, backslashes doubled, the result cut
    at ``limit`` characters with the original length noted."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    safe = _UNSAFE.sub(_escape_char, text[:limit].replace("\\", "\\\\"))
    return f"{safe}...({len(text)} chars)" if cut else safe


# A parameter name starts the text or follows a character that can end
# whatever came before it; only the name and "=" are consumed, so a name
# inside another parameter's value (``a=b?token=...``) is still found.
_PARAM_NAME = re.compile(r"(?:^|(?<=[?&;\s\"'/]))([^=&?;\s\"'/]+)=")
# The query parser ends a value at "&" only; whitespace ends the request
# target in a request line.
_VALUE_END = re.compile(r"[&\s]")
_SECRET_NAMES = frozenset({"token", "access_token"})


def _is_secret(name: str) -> bool:
    if "%" in name or "+" in name:
        # Names are compared decoded: the app reads ``tok%65n=`` as ``token=``.
        name = unquote_plus(name).strip().lstrip("?;&")
    return name.lower() in _SECRET_NAMES


def redact(text: str) -> str:
    """``text`` with the whole value of every ``token``/``access_token``
    parameter, up to the next ``&`` or the end of the query, masked."""
    if "=" not in text:
        return text
    parts: list[str] = []
    done = 0
    for match in _PARAM_NAME.finditer(text):
        if match.start() < done or not _is_secret(match.group(1)):
            continue
        end = _VALUE_END.search(text, match.end())
        parts += [text[done:match.end()], "***"]
        done = end.start() if end else len(text)
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _clean(text: str, limit: int) -> str:
    """Masked, cut and escaped for one line; backslashes are left alone, so a
    value its call site already escaped passes unchanged."""
    head = redact(text[:limit])
    safe = _UNSAFE.sub(_escape_char, head)
    return f"{safe}...({len(text)} chars)" if len(text) > limit else safe


def _plain(value: object) -> bool:
    # What %-formatting renders from these cannot hold a line break.
    return value is None or isinstance(value, str | int | float)


def lighten_records() -> None:
    """Stop every log record from recording its call site, thread and process
    (the optimisations of the logging HOWTO): no format here prints them, and
    looking up the call site alone costs more than a quarter of an access line."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _clean_arg(value: object) -> object:
    if not isinstance(value, str):
        return value
    # Most arguments are short, printable and hold no "name=value": nothing to do.
    # (Every character _UNSAFE matches is one str.isprintable() refuses.)
    if len(value) <= MAX_ARG_CHARS and value.isprintable() and "=" not in value:
        return value
    return _clean(value, MAX_ARG_CHARS)


#: Message templates a filter remembers as needing nothing done; they are few
#: (the call sites' constants), and an unbounded variety only refills the set.
_KNOWN_SAFE_MESSAGES = 256


class SafeRecords(logging.Filter):
    """Every record made safe for one log line; see the module docstring."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._safe_messages: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(_CLEANED):
            return True
        record.__dict__[_CLEANED] = True
        args = record.args
        if isinstance(args, tuple):
            args = tuple(map(_clean_arg, args))
            plain = all(map(_plain, args))
        elif isinstance(args, Mapping):
            args = {k: _clean_arg(v) for k, v in args.items()}
            plain = all(map(_plain, args.values()))
        else:
            plain = True
        record.args = args
        msg = record.msg
        if isinstance(msg, str):
            safe = msg in self._safe_messages
            if not safe:
                msg = record.msg = redact(msg)
                safe = len(msg) <= MAX_MESSAGE_CHARS and not _UNSAFE.search(msg)
                if safe:
                    if len(self._safe_messages) >= _KNOWN_SAFE_MESSAGES:
                        self._safe_messages.clear()
                    self._safe_messages.add(msg)
            if safe and plain:
                return True
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple):
            record.args = tuple(a if _plain(a) else _clean(str(a), MAX_ARG_CHARS) for a in args)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging reports it itself
            return True
        cleaned = _clean(message, MAX_MESSAGE_CHARS)
        if cleaned != message:
            # Only then: handlers that group records by their template keep it.
            record.msg, record.args = cleaned, None
        return True


def install_filter(*names: str) -> None:
    """Put :class:`SafeRecords` on every handler that prints the records of
    the root logger and of ``names`` (for a process whose logging was set up
    without :func:`log_config`, e.g. plain ``uvicorn``), once each."""
    handlers: list[logging.Handler] = []
    for name in ("", *names):
        handlers += logging.getLogger(name).handlers
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, SafeRecords) for f in handler.filters):
            handler.addFilter(SafeRecords())


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

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            client_addr, method, full_path, http_version, status_code = args
            code = status_code if isinstance(status_code, int) else int(str(status_code))
            record.client_addr = client_addr
            record.request_line = f"{method} {full_path} HTTP/{http_version}"
            record.status_code = _STATUS_LINES.get(code) or f"{code} "
        return super().formatMessage(record)


def log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service; ``fmt`` is
    ``SSE_LOG_FORMAT``: ``text`` or ``json``."""
    text = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    access = '%(asctime)s INFO access: %(client_addr)s "%(request_line)s" %(status_code)s'
    formatters: dict[str, Any] = {
        "default": {"()": TextLines, "fmt": text},
        "access": {"()": TextLines, "fmt": access},
    }
    if fmt == "json":
        # By name: logs_json builds on this module.
        json_lines = "sse_service.logs_json.JsonLines"
        formatters = {"default": {"()": json_lines}, "access": {"()": json_lines}}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"safe": {"()": SafeRecords}},
        "formatters": formatters,
        "handlers": {
            "default": {"class": "sse_service.logs.LoopFlushedHandler", "formatter": "default",
                        "filters": ["safe"], "stream": "ext://sys.stderr"},
            "access": {"class": "sse_service.logs.LoopFlushedHandler", "formatter": "access",
                       "filters": ["safe"], "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level.upper()},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
