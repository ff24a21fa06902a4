"""The Server-Sent Events wire format: a pure encoder and decoder, no I/O.

Follows the WHATWG HTML "Server-sent events" section (event stream
interpretation).  The encoder refuses what a parser would misread (CR, LF or
NUL in an id, line breaks in an event name); the decoder is the spec's
algorithm, used by the CLI, the benchmarks and the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "Decoder",
    "ServerSentEvent",
    "encode",
    "encode_comment",
    "encode_comment_line",
    "encode_message",
    "encode_retry",
]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    return _LINE_BREAK.split(text)


def encode(
    data: str,
    *,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event; multi-line ``data`` becomes one ``data:`` line per line."""
    parts: list[str] = []
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError("an event id must not contain CR, LF or NUL")
        parts.append(f"id: {id}\n")
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError("an event name must not contain CR or LF")
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(encode_retry(retry).decode())
    parts.extend(f"data: {line}\n" for line in _lines(data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str = "") -> bytes:
    """Comment lines, ignored by clients; they keep proxies and NAT tables awake."""
    return "".join(f": {line}\n" for line in _lines(text)).encode() + b"\n"


def encode_comment_line(text: str) -> bytes:
    """One comment line with no blank line after it: a parser ignores it and
    dispatches nothing, so it can stand before any block without ending one
    (clients that make a message of every block would see an empty one)."""
    if "\r" in text or "\n" in text:
        raise ValueError("a comment line must not contain CR or LF")
    return f": {text}\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise ValueError("retry must be a non-negative integer")
    return f"retry: {int(milliseconds)}\n".encode()


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class Decoder:
    """Incremental parser: feed text chunks, get the events they complete.

    ``last_event_id`` persists across events as the spec requires; a block with
    only an ``id:`` field updates it without producing an event.  ``on_comment``,
    when given, is called with each whole comment line (text after the colon,
    one leading space removed), however the chunks split it.
    """

    def __init__(self, on_comment: Callable[[str], None] | None = None) -> None:
        self.last_event_id = ""
        self._on_comment = on_comment
        self.retry: int | None = None
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id = ""
        self._started = False
        self._pending_cr = False

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if not self._started:
            self._started = True
            chunk = chunk.removeprefix("\ufeff")
        if self._pending_cr and chunk.startswith("\n"):
            chunk = chunk[1:]
        self._pending_cr = chunk.endswith("\r")
        text = self._buffer + chunk
        lines = _lines(text)
        self._buffer = lines.pop()
        return [event for line in lines for event in self._line(line)]

    def _line(self, line: str) -> Iterator[ServerSentEvent]:
        if line == "":
            yield from self._dispatch()
            return
        if line.startswith(":"):
            # Ignored as the spec says; a client that watches keepalives sees them.
            if self._on_comment is not None:
                self._on_comment(line[1:].removeprefix(" "))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)

    def _dispatch(self) -> Iterator[ServerSentEvent]:
        # The id takes effect when its block ends, never mid-block.
        self.last_event_id = self._id
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return
        yield ServerSentEvent(
            data="\n".join(data), event=event or "message", id=self.last_event_id, retry=self.retry
        )


def encode_message(id: str, data: bytes) -> bytes:
    """Fast path for the hot loop: one id and a single-line, already encoded ``data``."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("encode_message takes single-line data; use encode()")
    return b"id: %s\ndata: %s\n\n" % (id.encode(), data)
