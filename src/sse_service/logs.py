"""Logging set-up: one format, and no token ever reaches a log line.

Browsers that cannot send headers put the token in ``?token=``; uvicorn's
access log prints the whole request line, so a filter masks the value first.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["RedactTokens", "log_config", "redact"]

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
