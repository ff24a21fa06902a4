"""Where a stream's frames go: a bounded queue, or straight onto the socket.

A :class:`~sse_service.connection.Connection` decides *what* its client gets
(positions, replay, resync); its outlet decides *how* the bytes leave and
when there are too many of them.  Each outlet is a stream's own bounded queue,
pushed into by the hub and waited on by nothing else:

:class:`QueueOutlet`
    For the portable ASGI endpoint: frames wait in a list until the stream's
    writer coroutine sends them all as one chunk.  Bounded in frames
    (``SSE_QUEUE_SIZE``) and bytes (``SSE_QUEUE_BYTES``); replayed history is
    bounded by the history size instead, so it does not count.
:class:`SocketOutlet`
    For streams served on the socket (``sse-service serve``): frames, chunk-
    framed, wait for the loop turn's end, then leave in one write per stream
    (:class:`SocketWrites`); the transport's write buffer is the queue.  Past
    ``SSE_QUEUE_BYTES`` unsent, waiting or buffered (plus what a replay put
    there, until the client has taken it), the stream is cut.

Either way a closed stream's last frames get :data:`FLUSH_SECONDS` to reach
the client; a socket with bytes still unsent then is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["FLUSH_SECONDS", "QueueOutlet", "SocketOutlet", "SocketWrites", "chunk"]

logger = logging.getLogger(__name__)

#: How long a closed stream's last frames may take to reach a client that is
#: still connected before its socket is aborted.
FLUSH_SECONDS = 1.0


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def abort_later(transport: asyncio.WriteTransport) -> None:
    asyncio.get_running_loop().call_later(FLUSH_SECONDS, _abort_if_stalled, transport)


def _abort_if_stalled(transport: asyncio.WriteTransport) -> None:
    # A client that took everything is left alone (its connection may be kept
    # alive for another request); one that did not is not waited for.
    if transport.get_write_buffer_size():
        transport.abort()


class QueueOutlet:
    __slots__ = ("_limit", "_byte_limit", "_frames", "_bytes", "_history", "_waiter",
                 "transport")

    def __init__(self, limit: int, byte_limit: int) -> None:
        self._limit = limit
        self._byte_limit = byte_limit
        self._frames: list[bytes] = []
        # Bytes of live frames queued, and how many queued frames are replayed.
        self._bytes = 0
        self._history = 0
        self._waiter: asyncio.Future[None] | None = None
        #: The socket under the ASGI server, when it exposes it (only to abort).
        self.transport: asyncio.WriteTransport | None = None

    @property
    def backlog(self) -> tuple[int, int]:
        """Live frames and bytes waiting."""
        return len(self._frames) - self._history, self._bytes

    def put(self, frame: bytes, framed: bytes | None = None) -> bool:
        queued = self._bytes + len(frame)
        if len(self._frames) - self._history >= self._limit or queued > self._byte_limit:
            return False
        self._bytes = queued
        self._frames.append(frame)
        self._wake()
        return True

    def put_history(self, frames: list[bytes]) -> None:
        self._frames.extend(frames)
        self._history += len(frames)
        self._wake()

    def close(self, closing: bytes, flush: bool) -> None:
        if not flush:
            self._frames.clear()
        self._frames.append(closing)
        transport, self.transport = self.transport, None
        if transport is not None:
            abort_later(transport)
        self._wake()

    def take(self) -> bytes | None:
        """Everything queued as one chunk (one write), or None when empty."""
        frames = self._frames
        if not frames:
            return None
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        self._history = 0
        self._bytes = 0
        return data

    async def wait(self) -> None:
        if self._frames:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SocketWrites:
    """The socket outlets with frames waiting, each written once at the turn's end:
    a turn may handle dozens of deliveries (pipelined requests), and a send costs
    the kernel far more than a frame's bytes (with the reader's wake-up), so five
    events to a stream in one turn cost one send, not five.  One per hub."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[SocketOutlet] = []

    def wait(self, outlet: SocketOutlet) -> None:
        """``outlet`` has its first frame waiting this turn."""
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self.flush)
        self._waiting.append(outlet)

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for outlet in waiting:
            try:
                outlet.flush()
            except Exception:
                # One socket's failure must not leave the others' frames waiting.
                logger.exception("writing a stream's frames failed; aborting its socket")
                outlet.abort()


class SocketOutlet:
    __slots__ = ("_transport", "_chunked", "_byte_limit", "_grace", "_on_end", "_writes",
                 "_waiting", "_waiting_bytes")

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        chunked: bool,
        byte_limit: int,
        on_end: Callable[[bool], None],
        writes: SocketWrites,
    ) -> None:
        self._transport: asyncio.WriteTransport | None = transport
        self._chunked = chunked
        self._byte_limit = byte_limit
        # Replayed bytes still allowed in the buffer on top of the bound.
        self._grace = 0
        self._on_end = on_end
        self._writes = writes
        # Live frames (chunk-framed where chunked) not yet handed to the transport.
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0

    @property
    def backlog(self) -> tuple[int, int]:
        transport = self._transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return len(self._waiting), buffered + self._waiting_bytes

    def put(self, frame: bytes, framed: bytes | None = None) -> bool:
        transport = self._transport
        if transport is None:
            return True
        data = (framed or chunk(frame)) if self._chunked else frame
        waiting = self._waiting_bytes + len(data)
        if transport.get_write_buffer_size() + waiting > self._byte_limit + self._grace:
            return False
        if not self._waiting:
            self._writes.wait(self)
        self._waiting.append(data)
        self._waiting_bytes = waiting
        return True

    def flush(self) -> None:
        """Hand the waiting frames to the transport, in one write."""
        waiting = self._waiting
        if not waiting:
            return
        data = waiting[0] if len(waiting) == 1 else b"".join(waiting)
        waiting.clear()
        self._waiting_bytes = 0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()

    def put_history(self, frames: list[bytes]) -> None:
        self.write(b"".join(frames))

    def write(self, data: bytes, head: bytes = b"") -> None:
        """Bytes outside the bound (preamble, replay): allowed until they are taken.
        ``head``, the response head, goes out in the same write.  Frames waiting
        for the turn's end go first, to keep the order."""
        transport = self._transport
        if transport is not None and (data or head):
            self.flush()
            self._grace += len(data)
            transport.write(head + (chunk(data) if self._chunked and data else data))

    def drained(self) -> None:
        """The client took what was buffered: the bound applies to live frames again."""
        self._grace = 0

    def close(self, closing: bytes, flush: bool) -> None:
        """Write the closing frame and end the response; ``on_end(reusable)`` is told
        whether the connection may serve another request (not after a cut, nor
        without chunks, where only the end of the connection ends the stream)."""
        if flush:
            self.flush()
        else:
            # Not yet handed over, so still ours to drop.
            self._waiting.clear()
            self._waiting_bytes = 0
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if not transport.is_closing():
            # Bytes already handed to the transport cannot be taken back; the
            # closing frame follows them and the socket gets its flush time.
            if self._chunked:
                transport.write((chunk(closing) if closing else b"") + b"0\r\n\r\n")
            elif closing:
                transport.write(closing)
            abort_later(transport)
        self._on_end(flush and self._chunked)
