"""One open stream: the client's position, and what it is sent next.

Producers never await a connection: :meth:`Connection.offer` hands bytes to
the stream's outlet (:mod:`.outlet`: a bounded queue, or the socket itself),
which says when a client has fallen too far behind.  Such a stream is cut
with the named reason ``slow_consumer``: what it had queued is dropped and
its slot is released at once (``on_close``); the client reconnects with
``Last-Event-ID`` and replays from history, so nothing is lost and nobody
else waits.  However a stream ends, its closing frame is still written, and a
client that has not taken it :data:`~.outlet.FLUSH_SECONDS` later has its
socket aborted, so a stalled client never holds a socket, a slot or a
shutdown.  The bytes of each frame are :mod:`.frames`'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .broker import Position, Record, Replay
from .errors import CloseReason, ResyncReason
from .frames import (
    KEEPALIVE,
    KEEPALIVE_CHUNK,
    closing_frame,
    ready_frame,
    record_frame,
    resync_frame,
)
from .logs import escape
from .outlet import QueueOutlet
from .socket_outlet import SocketOutlet

__all__ = ["Connection"]

logger = logging.getLogger(__name__)


class Connection:
    __slots__ = (
        "user_id",
        "deadline",
        "issued_at",
        "epoch",
        "floor",
        "reason",
        "active",
        "idle_since",
        "outlet",
        "_pending",
        "_on_close",
    )

    def __init__(
        self,
        user_id: str,
        deadline: float | None,
        limit: int,
        now: float,
        byte_limit: int = 1 << 20,
        on_close: Callable[[Connection], None] | None = None,
        issued_at: float | None = None,
        after: Position | None = None,
    ) -> None:
        self.user_id = user_id
        self.deadline = deadline
        #: The token's ``iat``, which decides whether a sign-out ends the stream.
        self.issued_at = issued_at
        # Until the stream starts, the position the client resumes from, if any.
        self.epoch = None if after is None else after.epoch
        self.floor = 0 if after is None else after.offset
        self.reason: CloseReason | None = None
        self.active = True
        self.idle_since = now
        self.outlet: QueueOutlet | SocketOutlet = QueueOutlet(limit, byte_limit)
        # Live records that arrive while the history is being read wait here.
        self._pending: list[tuple[Record, bytes]] | None = []
        self._on_close = on_close

    @property
    def closed(self) -> bool:
        return self.reason is not None

    @property
    def opening(self) -> bool:
        return self._pending is not None

    @property
    def position(self) -> Position | None:
        return None if self.epoch is None else Position(self.epoch, self.floor)

    def start(self, replay: Replay, resync: str | None = None) -> bool:
        """Queue the replay (or a resync), then what arrived meanwhile; False on a gap.
        ``replay`` was read after the position the stream was opened with."""
        fresh = self.epoch is None
        if not self._resync(replay.head, resync or replay.resync):
            self._put_history(replay.records)
            if fresh:
                # The browser's lastEventId now points here even before the first
                # event, so an early reconnect misses nothing; a named event so that
                # script can read the position too (an id-only block hides it).
                self._put(ready_frame(replay.head))
        self.epoch, self.floor = replay.head.epoch, replay.head.offset
        pending, self._pending = self._pending or [], None
        # Records of another epoch were published before the history the replay
        # names replaced theirs: the replay (or its resync) covers them.
        return all([self.offer(record, frame) for record, frame in pending
                    if record.epoch == self.epoch])

    def offer(self, record: Record, frame: bytes, framed: bytes | None = None) -> bool:
        """Send a live record unless already delivered; False when one is missing.
        ``frame`` is :func:`record_frame`'s, ``framed`` the same as an HTTP chunk,
        both built once for every stream."""
        if self._pending is not None:
            self._pending.append((record, frame))
            return True
        # One comparison in the common case; what a new epoch means, _resync says.
        if record.epoch != self.epoch:
            self._resync(record.position, None, live=True)
        if record.offset <= self.floor:
            return True
        if record.offset != self.floor + 1:
            return False
        self.floor = record.offset
        # _put, written out: this line runs once per stream per event.
        if self.reason is None:
            if self.outlet.put(frame, framed):
                self.active = True
            else:
                self._cut_slow()
        return True

    def catch_up(self, replay: Replay) -> None:
        """Apply a history read made from an earlier position of this stream.

        Live records may have moved the stream on while the read was in flight,
        even into a new epoch (``offer`` announced that with a resync), so a read
        is applied only as far as it is news: within an epoch the position only
        moves forward, and an epoch is announced once.
        """
        head = replay.head
        if self._resync(head, replay.resync) or replay.resync is not None:
            return
        # Records after the position read from, in the head's epoch; those
        # of an epoch the stream has left are of no use to it.
        if head.epoch == self.epoch:
            fresh = [r for r in replay.records if r.offset > self.floor]
            self._put_history(fresh)
            if fresh:
                self.floor = fresh[-1].offset

    def _resync(self, head: Position, reported: str | None, live: bool = False) -> bool:
        """Whether the client must refetch (then queue ``event: resync`` and move the
        stream there): the one place that decides it, and with which reason.

        ``head`` is where a history read ended and ``reported`` the resync it
        reported (:attr:`~.broker.Replay.resync`); for a ``live`` record, its position.
        """
        reason: str | None = reported
        at = head
        if self._pending is not None:
            pass  # the first read: what the client asked for cannot be given
        elif live:
            # The history this client was reading is gone: it must refetch.
            at = Position(head.epoch, head.offset - 1)
            reason = ResyncReason.HISTORY_LOST if head.epoch != self.epoch else None
        elif reported is None:
            return False
        elif head.epoch != self.epoch:
            # Only news when the history moved to an epoch this stream has not
            # heard of; otherwise the read was about an epoch it has since left.
            if reported != ResyncReason.UNKNOWN_EPOCH:
                return False
        elif reported == ResyncReason.UNKNOWN_EPOCH:
            # Read from an older epoch, but live records already brought the
            # stream into the head's epoch, with its resync.  Records up to the
            # head that it lacks are still on their way through pub/sub; a lost
            # one shows as a hole or a reconnect, and both read again.
            return False
        else:
            # Records after the stream's position are gone (expired), or the
            # history is behind it: only a refetch helps.
            at = Position(head.epoch, max(self.floor, head.offset))
        if reason is None:
            return False
        self._put(resync_frame(at, reason))
        self.epoch, self.floor = at.epoch, at.offset
        return True

    def keepalive(self) -> None:
        self._put(KEEPALIVE, KEEPALIVE_CHUNK)

    def attach(self, transport: asyncio.WriteTransport | None) -> None:
        """The socket under the ASGI server, when it exposes it: a stalled client
        can then be aborted once the stream is closed."""
        if isinstance(self.outlet, QueueOutlet):
            self.outlet.transport = transport

    def serve_on(self, outlet: SocketOutlet, head: bytes, preamble: bytes) -> None:
        """From now on write straight to the socket: the response head, the preamble
        and whatever was queued while the stream opened go out as one write."""
        queued = self.outlet
        self.outlet = outlet
        if isinstance(queued, QueueOutlet):
            outlet.write(preamble + (queued.take() or b""), head)
        if self.reason is not None:
            # Closed while opening: the queue already held the closing frame.
            outlet.close(b"", flush=False)

    def close(self, reason: CloseReason, flush: bool = True) -> None:
        """End the stream (once); ``flush=False`` drops what is still queued.  The
        slot is released at once either way."""
        if self.reason is not None:
            return
        self.reason = reason
        self.outlet.close(closing_frame(reason), flush)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def _put_history(self, records: list[Record]) -> None:
        if self.reason is not None or not records:
            return
        self.outlet.put_history([record_frame(r) for r in records])
        self.active = True

    def _put(self, frame: bytes, framed: bytes | None = None) -> None:
        if self.reason is not None:
            return
        if not self.outlet.put(frame, framed):
            self._cut_slow()
            return
        self.active = True

    def _cut_slow(self) -> None:
        frames, unsent = self.outlet.backlog
        logger.warning(
            "disconnecting a stream of user %s: %s (%d frames, %d bytes unsent)",
            escape(self.user_id), CloseReason.SLOW_CONSUMER, frames, unsent,
            extra={"reason": CloseReason.SLOW_CONSUMER, "user_id": escape(self.user_id)},
        )
        self.close(CloseReason.SLOW_CONSUMER, flush=False)

