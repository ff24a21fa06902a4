"""A Dapr delivery's body decoded, though it may be poisoned, and the reply encoded (pure, no I/O).

:func:`decode_delivery` parses a delivery.  When Python's parser refuses a
bulk as a whole (an entry nested deeper than it recurses, an integer longer
than it converts), the bulk is walked entry by entry, so only the unreadable
entries are lost: each becomes an :class:`~.cloudevents.Unreadable`.  What the
decoded envelope means is :mod:`.cloudevents`' business.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from .cloudevents import Unreadable, is_bulk
from .errors import EventError
from .jsondecode import DECODER, loads

__all__ = ["Reply", "decode_delivery"]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer daprd reads: a JSON object and its HTTP status."""

    content: dict[str, Any]
    status_code: int = 200

    def body(self) -> bytes:
        try:
            return orjson.dumps(self.content)
        except TypeError:  # a lone surrogate in an entryId: the stdlib encoder escapes it
            return json.dumps(self.content, separators=(",", ":")).encode()


def decode_delivery(body: bytes) -> object:
    """The decoded body; :class:`EventError` when it is not JSON at all."""
    try:
        return loads(body)
    except RecursionError:
        reason = "body is nested too deeply"
    except ValueError:  # UnicodeDecodeError and integers too long to convert too
        reason = "body is not valid JSON"
    try:
        document = _Walker(body.decode("utf-8", "surrogatepass")).document()
    except (_Broken, UnicodeDecodeError):
        raise EventError(reason) from None
    if not is_bulk(document):
        raise EventError(reason)
    return document


_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = r'"(?:[^"\\]|\\.)*"'
# Outside strings: runs without closers (openers counted in bulk), runs of closers.
_TOKENS = re.compile(_STRING + r'|[^"\]}]+|[\]}]+')
_SCALAR = re.compile(_STRING + r"|[-+0-9.eE]+|true|false|null|NaN|-?Infinity")
_T = TypeVar("_T")
#: Tokens scanned to skip one unreadable value (some milliseconds); a deep
#: event of a realistic size needs a handful, as runs of brackets are one token.
_SKIP_TOKENS = 100_000


class _Broken(Exception):
    """The text is not a JSON object of the bulk's shape."""


class _Walker:
    """Reads the top two levels of a bulk by hand and each value beneath with the
    stdlib parser; a value it refuses is skipped (brackets matched outside
    strings) and kept as :class:`Unreadable`.  Iterative, so no depth breaks it."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def document(self) -> object:
        document = self._object(lambda key: self._entries() if key == "entries" else self._value())
        self._skip_space()
        if self._pos != len(self._text):
            raise _Broken
        return document

    def _entries(self) -> object:
        if not self._next_is("["):
            return self._value()
        return self._items("[", lambda: self._object(lambda key: self._value())
                           if self._next_is("{") else self._value())

    def _object(self, member: Callable[[str], object]) -> dict[str, object]:
        def pair() -> tuple[str, object]:
            key = self._value()
            if not isinstance(key, str) or not self._take(":"):
                raise _Broken
            return key, member(key)

        return dict(self._items("{", pair))

    def _items(self, opener: str, item: Callable[[], _T]) -> list[_T]:
        """What ``item`` reads for each element of the array or object opening here."""
        closer = "]" if opener == "[" else "}"
        if not self._take(opener):
            raise _Broken
        items: list[_T] = []
        if self._take(closer):
            return items
        while True:
            items.append(item())
            if self._take(closer):
                return items
            if not self._take(","):
                raise _Broken

    def _value(self) -> object:
        self._skip_space()
        try:
            value, self._pos = DECODER.raw_decode(self._text, self._pos)
            return value
        except RecursionError:
            reason = "nested too deeply"
        except ValueError:
            reason = "not valid JSON"
        self._pos = self._end_of_value()
        return Unreadable(reason)

    def _end_of_value(self) -> int:
        if not self._next_is("[") and not self._next_is("{"):
            match = _SCALAR.match(self._text, self._pos)
            if match is None:
                raise _Broken
            return match.end()
        depth = 0
        for count, match in enumerate(_TOKENS.finditer(self._text, self._pos)):
            if count > _SKIP_TOKENS:
                raise _Broken  # not worth a blocked event loop: the bulk is dropped whole
            token = match.group()
            if token[0] == '"':
                continue
            if token[0] != "]" and token[0] != "}":
                depth += token.count("[") + token.count("{")
            elif len(token) < depth:
                depth -= len(token)
            else:
                return match.start() + depth
        raise _Broken

    def _skip_space(self) -> None:
        match = _SPACE.match(self._text, self._pos)
        assert match is not None
        self._pos = match.end()

    def _next_is(self, char: str) -> bool:
        self._skip_space()
        return self._text.startswith(char, self._pos)

    def _take(self, char: str) -> bool:
        if self._next_is(char):
            self._pos += 1
            return True
        return False
