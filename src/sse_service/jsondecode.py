"""JSON text to Python values, for the hot paths (a token per connect, a body per delivery).

:func:`loads` accepts exactly what :func:`json.loads` accepts for UTF-8 input
and returns the same values, at a third of the cost for the small documents
these paths see: :func:`json.loads` given bytes first sniffs the encoding
(UTF-16 and UTF-32 included) and then scans the text for whitespace with a
regular expression on both ends; here the text is UTF-8 (RFC 8259 section 8.1
requires it between systems; a leading byte order mark is skipped, as
:func:`json.loads` skips it) and goes straight to the C scanner.

Errors are :class:`json.JSONDecodeError` (a ``ValueError``) for text that is
not JSON, ``UnicodeDecodeError`` (also a ``ValueError``) for bytes that are not
UTF-8, and ``RecursionError`` for nesting deeper than the interpreter's limit,
as with :func:`json.loads`.  Like it, ``NaN`` and ``Infinity`` are read as
floats: what reaches a client is re-encoded strictly elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any

__all__ = ["loads"]

# The decoder's C scanner: value and end offset of the JSON value at an offset.
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(  # typeshed: the C type, not its arg
    json.JSONDecoder()  # type: ignore[arg-type]
)
_WHITESPACE = " \t\n\r"
_BOM = b"\xef\xbb\xbf"


def loads(data: bytes | str) -> Any:
    """The value of one JSON text; see the module docstring for the errors."""
    if isinstance(data, bytes):
        if data.startswith(_BOM):
            data = data[3:]
        # As json.loads decodes bytes: a UTF-8 encoded lone surrogate passes,
        # to be refused where text is checked.
        text = data.decode("utf-8", "surrogatepass")
    else:
        text = data
    text = text.strip(_WHITESPACE)
    try:
        value, end = _SCAN(text, 0)
    except StopIteration as stop:
        raise json.JSONDecodeError("Expecting value", text, stop.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value
