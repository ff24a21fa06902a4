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
:class:`~.socket_outlet.SocketOutlet`
    For streams served on the socket (``sse-service serve``): frames, chunk-
    framed, wait for the loop turn's end, then leave in one write per stream
    (:class:`~.socket_outlet.SocketWrites`); the transport's write buffer is
    the queue.  Past ``SSE_QUEUE_BYTES`` unsent, waiting or buffered (plus
    what a replay put there, until the client has taken it), the stream is cut.

Either way a closed stream's last frames get :data:`FLUSH_SECONDS` to reach
the client; a socket with bytes still unsent then is aborted.
"""

from __future__ import annotations

import asyncio

__all__ = ["FLUSH_SECONDS", "QueueOutlet", "abort_later", "chunk"]

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
