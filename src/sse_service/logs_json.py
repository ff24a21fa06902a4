"""JSON log lines (``SSE_LOG_FORMAT=json``): one object per record, on one line.

Each line holds ``time`` (UTC, milliseconds), ``level``, ``logger`` and
``message``; an access record adds uvicorn's arguments as ``client``,
``method``, ``path`` (tokens masked), ``http_version`` and ``status``; and
whatever a call site passed as ``extra=`` is a field too.  The records have
been through :class:`~.logs.SafeRecords` already; field values are made safe
the same way (masked, escaped, bounded), numbers stay numbers, and the line is
valid UTF-8 whatever a traceback held.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from .logs import _ACCESS_LOGGER, _CLEANED, MAX_ARG_CHARS, _clean

__all__ = ["JsonLines", "trace_id"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_TRACEPARENT_CHARS = 55


def trace_id(traceparent: object) -> str | None:
    """The trace id of a valid W3C ``traceparent`` (version 00), else None: the
    all-zero ids daprd sends when nothing is traced are no trace."""
    if not isinstance(traceparent, str) or len(traceparent) != _TRACEPARENT_CHARS:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1)


# Record attributes that are not fields of a JSON line (uvicorn's
# ``color_message`` repeats the message with terminal colours).
_NOT_FIELDS = frozenset({*RESERVED_ATTRS, "taskName", "message", "asctime",
                         "color_message", _CLEANED})
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
# What json.dumps leaves raw that is no valid UTF-8 (lone surrogates) or that
# str.splitlines() and terminals act on; only a traceback can still hold one.
_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_INT_BOUND = 1 << 64
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _field(value: object) -> object:
    """A structured value made safe like an argument; numbers stay numbers."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Huge ints are slow to print, and refused past 4300 digits.
        return value if -_INT_BOUND < value < _INT_BOUND else f"({value.bit_length()}-bit int)"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON has no NaN
    return _clean(value if isinstance(value, str) else str(value), MAX_ARG_CHARS)


def _escape_raw(match: re.Match[str]) -> str:
    # A JSON-escaped backslash: the value reads "\u2028", as escape() shows it.
    return f"\\\\u{ord(match.group(0)):04x}"


class JsonLines(JsonFormatter):
    """One JSON object per record, on one line; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(json_ensure_ascii=False, reserved_attrs=list(_NOT_FIELDS))
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float, msecs: float) -> str:
        second, stamp = self._second
        if int(created) != second:  # one strftime per second, not per line
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            self._second = (int(created), stamp)
        return f"{stamp}.{int(msecs):03d}Z"

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["time"] = self._time(record.created, record.msecs)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            # uvicorn's (client, method, path, http version, status), masked and
            # escaped by the filter already, unless this handler has none.
            cleaned = record.__dict__.get(_CLEANED)
            for key, value in zip(_ACCESS_FIELDS, args, strict=True):
                log_data[key] = value if cleaned else _field(value)
        for key, value in record.__dict__.items():
            if key not in _NOT_FIELDS:
                log_data[key] = _field(value)
        for key, value in message_dict.items():
            # Tracebacks stay whole; a dict logged as the message is made safe.
            log_data[key] = value if key in ("exc_info", "stack_info") else _field(value)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        # One encoder for every line; the values are plain already (_field).
        line = _ENCODE(log_data)
        return line if line.isascii() else _RAW.sub(_escape_raw, line)
