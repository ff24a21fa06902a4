"""The socket path's outlet: frames wait for the loop turn's end, then leave in one write.

:class:`SocketOutlet` is a stream's bounded queue on the socket (the contract
:mod:`.outlet` describes); :class:`SocketWrites` is the one list per hub of the
outlets with frames waiting, written out at the end of the loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .outlet import abort_later, chunk

__all__ = ["SocketOutlet", "SocketWrites"]

logger = logging.getLogger(__name__)


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
        size = self._waiting_bytes + len(data)
        if transport.get_write_buffer_size() + size > self._byte_limit + self._grace:
            return False
        frames = self._waiting
        if not frames:
            self._writes.wait(self)
        frames.append(data)
        self._waiting_bytes = size
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
