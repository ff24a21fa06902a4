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
as with :func:`json.loads`.  Like it, ``NaN`` and ``Infinity`` (and numbers
beyond a double's range) are read as floats, but as :class:`NonFinite` floats,
so an encoder that does not check each float's value can refuse them by type:
orjson (:mod:`.events`) would write them as ``null``.

orjson's parser is not used: it reads integers beyond 64 bits as floats,
silently, and telling such text apart first costs more than it saves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any

__all__ = ["DECODER", "NonFinite", "loads"]


class NonFinite(float):
    """``NaN``, ``Infinity``, ``-Infinity`` or a number too large for a double,
    as the stdlib parser reads it: still a float, marked as none that strict
    JSON may carry."""

    __slots__ = ()


def _constant(name: str) -> NonFinite:
    return NonFinite(name)


def _float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(value)


#: The stdlib decoder with non-finite numbers marked (for ``raw_decode``).
DECODER = json.JSONDecoder(parse_float=_float, parse_constant=_constant)
# The decoder's C scanner: value and end offset of the JSON value at an offset.
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(  # typeshed: the C type, not its arg
    DECODER  # type: ignore[arg-type]
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
