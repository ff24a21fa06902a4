"""JSON text to Python values, for the hot paths (a token per connect, a body per delivery).

:func:`loads` accepts exactly what :func:`json.loads` accepts for UTF-8 input
and returns the same values, faster:

* text is read by orjson, about two and a half times faster than the stdlib
  parser, where orjson gives the same values: orjson refuses what strict JSON
  refuses (``NaN``, ``Infinity``, numbers beyond a double, lone surrogates, a
  byte order mark, nesting past 1024) and reads integers beyond 64 bits as
  floats, so text it refuses, and text that may hold such an integer (a run of
  19 digits after ``:``, ``,``, ``[`` or whitespace, found by one translation
  and one search), is read by the stdlib parser instead;
* the stdlib parser is called as :func:`json.loads` calls it for a string,
  without the encoding sniffing (UTF-16 and UTF-32 included) it does for bytes:
  the text is UTF-8 (RFC 8259 section 8.1 requires it between systems; a
  leading byte order mark is skipped, as :func:`json.loads` skips it).

Errors are :class:`json.JSONDecodeError` (a ``ValueError``) for text that is
not JSON, ``UnicodeDecodeError`` (also a ``ValueError``) for bytes that are not
UTF-8, and ``RecursionError`` for nesting deeper than the interpreter's limit,
as with :func:`json.loads`.  Like it, ``NaN`` and ``Infinity`` (and numbers
beyond a double's range) are read as floats, but as :class:`NonFinite` floats,
so an encoder that does not check each float's value can refuse them by type:
orjson (:mod:`.events`) would write them as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from json.scanner import make_scanner
from typing import Any

import orjson

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
# Digits (and "-") become "0", what may come right before a number becomes
# "X": an integer orjson would read as a float shows as "X" and 19 "0"s, or
# as 19 "0"s at the start.  So may a negative one of 18 digits, or a
# string's "-" after a comma, which only sends the text to the stdlib
# parser; an untraced traceparent ("00-" and 32 zeros) follows a quote, not
# an "X".  One search, not one per sign.
_DIGITS = bytes.maketrans(b"0123456789-:,[ \t\n\r", b"00000000000XXXXXXX")
_LONG = b"0" * 19
_LONG_AFTER = b"X" + _LONG


def _exact_in_orjson(data: bytes) -> bool:
    """Whether no integer in ``data`` may lie beyond 64 bits (a cheap, safe answer)."""
    marked = data.translate(_DIGITS)
    return _LONG_AFTER not in marked and not marked.startswith(_LONG)


def loads(data: bytes | str) -> Any:
    """The value of one JSON text; see the module docstring for the errors."""
    if isinstance(data, bytes):
        if _exact_in_orjson(data):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # what the stdlib parser reads (or refuses) is the answer
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
