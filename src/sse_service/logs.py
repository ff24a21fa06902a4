"""Logging set-up: one format, and no token ever reaches a log line.

Browsers that cannot send headers put the token in ``?token=``; uvicorn's
access log prints the whole request line, so a filter masks the value first.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["RedactTokens", "escape", "log_config", "redact"]

#: The longest rendering of one untrusted value in a log line.
MAX_LOGGED_CHARS = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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

_QUERY_PARAM = re.compile(r"(^|[?&;])([^=&;?/\s\"]+)=[^&;?\s\"]*")
_SECRET_NAMES = frozenset({"token", "access_token"})


def _mask(match: re.Match[str]) -> str:
    # Names are compared decoded: the app reads ``tok%65n=`` as ``token=``.
    if unquote_plus(match.group(2)).lower() in _SECRET_NAMES:
        return f"{match.group(1)}{match.group(2)}=***"
    return match.group(0)


def redact(text: str) -> str:
    return _QUERY_PARAM.sub(_mask, text)


class RedactTokens(logging.Filter):
    """Masks ``token=`` query values in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    access = '%(asctime)s INFO access: %(client_addr)s "%(request_line)s" %(status_code)s'
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactTokens}},
        "formatters": {
            "default": {"format": fmt},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": access,
                "use_colors": False,
            },
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default",
                        "filters": ["redact"], "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access",
                       "filters": ["redact"], "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level.upper()},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
