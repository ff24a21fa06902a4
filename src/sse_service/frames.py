"""The frames a stream sends, byte for byte: a record, ready, resync, keepalive, close.

Each is built here and nowhere else.  A record's frame is built once per event
(:meth:`~.hub.Hub.deliver`) and the same bytes go to every stream of its user;
the fixed ones (keepalive, each close) are built once per process.

Framing rule: every blank line the server sends ends a block that has
``data``.  Comments (``: connected``, ``: keepalive``, ``: closing: …``) and
the ``retry:`` line go out without a blank line of their own, so they join the
next event's block; clients that turn every block into a message (httpx-sse,
fetch-event-source) never see one without data.
"""

from __future__ import annotations

import json

from . import sse
from .broker import Position, Record
from .errors import CloseReason
from .outlet import chunk

__all__ = [
    "KEEPALIVE",
    "KEEPALIVE_CHUNK",
    "READY_DATA",
    "closing_frame",
    "ready_frame",
    "record_frame",
    "resync_data",
    "resync_frame",
]

# A bare comment line: it dispatches nothing, so no client sees an empty message.
KEEPALIVE = sse.encode_comment_line("keepalive")
KEEPALIVE_CHUNK = chunk(KEEPALIVE)
READY_DATA = '{"type":"ready"}'


def record_frame(record: Record) -> bytes:
    """A stored event as its clients get it: its position as the id, its data line."""
    # ``str(record.position)`` without building a Position: once per event and
    # per replayed record, it would cost more than the rest of the frame.
    return sse.encode_message(f"{record.epoch}-{record.offset}", record.data)


def resync_data(reason: str) -> str:
    return json.dumps({"type": "resync", "reason": reason}, separators=(",", ":"))


def resync_frame(head: Position, reason: str) -> bytes:
    """The client must refetch its state; its lastEventId moves to ``head``."""
    return sse.encode(resync_data(reason), id=str(head), event="resync")


_READY_TAIL = b"\nevent: ready\ndata: " + READY_DATA.encode() + b"\n\n"


def ready_frame(head: Position) -> bytes:
    """Where a stream opened without a position starts (an id the browser keeps)."""
    id = f"{head.epoch}-{head.offset}"
    if "\n" in id or "\r" in id or "\0" in id:
        return sse.encode(READY_DATA, id=id, event="ready")  # which refuses it
    # sse.encode's bytes, written out: once per connect.
    return b"id: " + id.encode() + _READY_TAIL


#: Reasons only ever given to streams whose client is already gone.
_UNSEEN = frozenset({CloseReason.CLIENT_DISCONNECTED, CloseReason.CLOSED})


def _closing(reason: CloseReason) -> bytes:
    # The comment is for people reading with curl (and tools that grep for
    # it); the event is what script can see.  No id: the close must not move
    # the client's lastEventId.
    comment = sse.encode_comment_line(f"closing: {reason}")
    if reason in _UNSEEN:
        return comment
    data = json.dumps({"type": "close", "reason": str(reason)}, separators=(",", ":"))
    return comment + sse.encode(data, event="close")


_CLOSING = {reason: _closing(reason) for reason in CloseReason}


def closing_frame(reason: CloseReason) -> bytes:
    """The last frame of a stream: ``event: close`` with the reason as JSON data."""
    return _CLOSING[reason]
