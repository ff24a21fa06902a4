"""No token and no forged line in any log line: escaping, masking and the filter on every handler.

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

Where lines go and how they look (text, or JSON with ``SSE_LOG_FORMAT=json``,
:mod:`.logs_json`) is :mod:`.log_setup`; both formats sit behind this filter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus

__all__ = [
    "MAX_ARG_CHARS",
    "MAX_LOGGED_CHARS",
    "SafeRecords",
    "escape",
    "install_filter",
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


def _clean_args(args: Iterable[object]) -> tuple[list[object], bool]:
    """The arguments made safe, and whether each renders on one line."""
    cleaned: list[object] = []
    plain = True
    for value in args:
        if isinstance(value, str):
            # Most are short, printable and hold no "name=value": nothing to do.
            # (Every character _UNSAFE matches is one str.isprintable() refuses.)
            if len(value) > MAX_ARG_CHARS or not value.isprintable() or "=" in value:
                value = _clean(value, MAX_ARG_CHARS)
        elif not (value is None or isinstance(value, int | float)):
            plain = False
        cleaned.append(value)
    return cleaned, plain


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
            values, plain = _clean_args(args)
            args = tuple(values)
        elif isinstance(args, Mapping):
            values, plain = _clean_args(args.values())
            args = dict(zip(args, values, strict=True))
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
