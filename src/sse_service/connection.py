"""One open stream: a bounded queue of encoded frames and the client's position.

Producers never await a connection: :meth:`Connection.offer` appends bytes and
wakes the writer.  A queue that overflows disconnects its client with the
named reason ``slow_consumer``; the client reconnects with ``Last-Event-ID``
and replays from history, so nothing is lost and nobody else waits.
"""

from __future__ import annotations

import asyncio
import logging

from . import sse
from .broker import Position, Record, Replay
from .events import resync_data

__all__ = ["KEEPALIVE", "Connection", "ready_frame", "resync_frame"]

logger = logging.getLogger(__name__)

KEEPALIVE = sse.encode_comment("keepalive")
READY_DATA = '{"type":"ready"}'


def resync_frame(head: Position, reason: str) -> bytes:
    return sse.encode(resync_data(reason), id=str(head), event="resync")


def ready_frame(head: Position) -> bytes:
    return sse.encode(READY_DATA, id=str(head), event="ready")


class Connection:
    __slots__ = (
        "user_id",
        "deadline",
        "epoch",
        "floor",
        "reason",
        "active",
        "idle_since",
        "_limit",
        "_frames",
        "_waiter",
        "_pending",
        "_flush",
        "_history",
    )

    def __init__(self, user_id: str, deadline: float | None, limit: int, now: float) -> None:
        self.user_id = user_id
        self.deadline = deadline
        self.epoch: str | None = None
        self.floor = 0
        self.reason: str | None = None
        self.active = True
        self.idle_since = now
        self._limit = limit
        self._frames: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        # Live records that arrive while the history is being read wait here.
        self._pending: list[tuple[Record, bytes]] | None = []
        self._flush = True
        # Replayed frames are bounded by the history size, not by the queue:
        # they do not count against the slow-consumer limit.
        self._history = 0

    @property
    def closed(self) -> bool:
        return self.reason is not None

    @property
    def opening(self) -> bool:
        return self._pending is not None

    @property
    def position(self) -> Position | None:
        return None if self.epoch is None else Position(self.epoch, self.floor)

    def start(self, replay: Replay, resync: str | None, mark: bool) -> bool:
        """Queue the replay (or a resync), then what arrived meanwhile; False on a gap."""
        reason = resync or replay.resync
        if reason is not None:
            self._put(resync_frame(replay.head, reason))
        else:
            self._put_history(replay.records)
            if mark:
                # The browser's lastEventId now points here even before the first
                # event, so an early reconnect misses nothing; a named event so that
                # script can read the position too (an id-only block hides it).
                self._put(ready_frame(replay.head))
        self.epoch, self.floor = replay.head.epoch, replay.head.offset
        pending, self._pending = self._pending or [], None
        return all([self.offer(record, frame) for record, frame in pending])

    def offer(self, record: Record, frame: bytes) -> bool:
        """Queue a live record unless already delivered; False when one is missing."""
        if self._pending is not None:
            self._pending.append((record, frame))
            return True
        if record.epoch != self.epoch:
            # The history this client was reading is gone: it must refetch.
            self.epoch, self.floor = record.epoch, record.offset - 1
            self._put(resync_frame(Position(record.epoch, self.floor), "history_lost"))
        if record.offset <= self.floor:
            return True
        if record.offset != self.floor + 1:
            return False
        self.floor = record.offset
        self._put(frame)
        return True

    def catch_up(self, replay: Replay) -> None:
        if replay.resync is not None:
            self._put(resync_frame(replay.head, replay.resync))
            self.epoch, self.floor = replay.head.epoch, replay.head.offset
            return
        fresh = [r for r in replay.records if r.epoch == self.epoch and r.offset > self.floor]
        self._put_history(fresh)
        if replay.records:
            self.floor = max(self.floor, replay.records[-1].offset)

    def keepalive(self) -> None:
        self._put(KEEPALIVE)

    def close(self, reason: str, flush: bool = True) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._flush = flush
        if not flush:
            self._frames.clear()
        self._wake()

    def take(self) -> bytes | None:
        """Everything queued as one chunk (one write), or None when empty."""
        frames = self._frames
        if not frames:
            return None
        chunk = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        self._history = 0
        return chunk

    async def wait(self) -> None:
        if self._frames or self.reason is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _put_history(self, records: list[Record]) -> None:
        if self.reason is not None or not records:
            return
        self._frames.extend(sse.encode_message(str(r.position), r.data) for r in records)
        self._history += len(records)
        self.active = True
        self._wake()

    def _put(self, frame: bytes) -> None:
        if self.reason is not None:
            return
        if len(self._frames) - self._history >= self._limit:
            logger.warning(
                "disconnecting a stream of user %s: slow_consumer (%d frames queued)",
                self.user_id,
                len(self._frames),
            )
            self.close("slow_consumer", flush=False)
            return
        self._frames.append(frame)
        self.active = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
