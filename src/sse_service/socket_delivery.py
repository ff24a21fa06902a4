"""Dapr deliveries (``POST /task-updates``) served on the socket, with no ASGI cycle.

The delivery route is the ingest hot path: daprd posts every event to it, and
uvicorn's request cycle (a task, the ASGI messages, header checks, two writes)
costs more than storing the event.  The HTTP protocol hands delivery requests
here instead.  Each is a :class:`SocketDelivery`, standing in for uvicorn's
cycle while its body arrives (uvicorn's protocol feeds it through the same
few attributes); the connection's :class:`DeliveryQueue` answers them in
order, as HTTP requires of pipelined requests, with one task for all of them,
and writes the answers that are ready together, in one write.  The answer is
:class:`~.ingest.DeliveryEndpoint`'s, exactly as on the ASGI path: the app
token, the size bounds (a declared ``Content-Length`` over the limit is
answered at once; a chunked body is no longer kept past it) and the ingest.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from .dapr_routes import DeliveryEndpoint
from .deliveries import Reply
from .log_setup import access_line

if TYPE_CHECKING:
    from .protocol import BoundedHttpProtocol

__all__ = ["MAX_QUEUED", "DeliveryQueue", "SocketDelivery"]

logger = logging.getLogger(__name__)

#: Pipelined deliveries one connection may have waiting; reading pauses beyond.
MAX_QUEUED = 64
_STATUS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found"}
#: The replies to single deliveries, encoded once.
_SINGLE = {status: b'{"status":"%s"}' % status.encode() for status in ("SUCCESS", "RETRY", "DROP")}


class SocketDelivery:
    __slots__ = ("_endpoint", "_headers", "_target", "_http_version", "_chunks", "_size",
                 "reply", "ready", "body", "response_complete", "disconnected",
                 "keep_alive", "more_body", "_on_ready", "_resume")

    def __init__(self, endpoint: DeliveryEndpoint, headers: dict[str, str], target: bytes,
                 http_version: str, keep_alive: bool, on_ready: Callable[[], None],
                 resume_reading: Callable[[], None]) -> None:
        self._endpoint = endpoint
        self._headers = headers
        self._target = target
        self._http_version = http_version
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._on_ready = on_ready
        self._resume = resume_reading
        #: The answer when the head alone decides it (app token, declared size).
        self.reply = endpoint.check(headers)
        self.ready = self.reply is not None
        #: uvicorn's protocol appends the body it parses here.
        self.body = bytearray()
        # Complete once written: until then uvicorn queues any request behind it,
        # so responses leave in request order.
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.more_body = True

    @property
    def message_event(self) -> SocketDelivery:
        return self

    def set(self) -> None:
        """uvicorn's protocol calls this after body bytes, at the end of the body, and
        on a disconnect (``cycle.message_event.set()``)."""
        if self.disconnected:
            if not self.ready:
                self.ready = True  # never answered: nobody is left to read it
                logger.info("a delivery ended early: the client disconnected mid-body")
            return
        body = self.body
        if body:
            self.body = bytearray()
            if not self.ready:
                self._keep(bytes(body))
            if len(body) > HIGH_WATER_LIMIT:
                self._resume()  # uvicorn paused reading until the body was taken
        if not self.ready and (not self.more_body or self._chunks is None):
            # The whole body, or past the limit: answerable now, the rest unread.
            self.ready = True
            self._on_ready()

    def _keep(self, data: bytes) -> None:
        if self._chunks is None:
            return
        self._size += len(data)
        if self._size > self._endpoint.limit:
            self._chunks = None
        else:
            self._chunks.append(data)

    async def answer(self) -> Reply:
        if self.reply is not None:
            return self.reply
        chunks = self._chunks
        body = None if chunks is None else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            return await self._endpoint.answer(self._headers, body)
        except Exception:
            # The ingest never raises by design; should it, daprd retries (never a 5xx).
            logger.exception("answering a delivery failed")
            return Reply({"status": "RETRY"})

    def response(self, reply: Reply, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        content = reply.content
        status = content.get("status") if len(content) == 1 else None
        payload = _SINGLE.get(status) if isinstance(status, str) else None
        if payload is None:
            payload = reply.body()
        head = [b"HTTP/1.1 %d %s\r\n" % (reply.status_code, _STATUS.get(reply.status_code, b""))]
        for name, value in default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(payload))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", payload]
        return b"".join(head)

    def log(self, protocol: BoundedHttpProtocol, status: int) -> None:
        if protocol.access_log:
            peer = protocol.client
            access_line(protocol.access_logger, f"{peer[0]}:{peer[1]}" if peer else "-", "POST",
                        self._target.decode("latin-1"), self._http_version, status)


class DeliveryQueue:
    """One connection's deliveries, answered in order by at most one task."""

    __slots__ = ("_protocol", "_waiting", "_task")

    def __init__(self, protocol: BoundedHttpProtocol) -> None:
        self._protocol = protocol
        self._waiting: deque[SocketDelivery] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def add(self, delivery: SocketDelivery) -> None:
        self._waiting.append(delivery)
        if len(self._waiting) >= MAX_QUEUED:
            self._protocol.flow.pause_reading()
        if delivery.ready:
            self.kick()

    def kick(self) -> None:
        if self._task is None and self._waiting and self._waiting[0].ready:
            protocol = self._protocol
            self._task = protocol.loop.create_task(self._work())
            protocol.tasks.add(self._task)
            self._task.add_done_callback(protocol.tasks.discard)

    async def _work(self) -> None:
        protocol = self._protocol
        waiting = self._waiting
        out: list[bytes] = []
        keep_alive = True
        try:
            while waiting and waiting[0].ready:
                delivery = waiting.popleft()
                reply = await delivery.answer()
                delivery.response_complete = True
                delivery.log(protocol, reply.status_code)
                out.append(delivery.response(reply, protocol.server_state.default_headers))
                keep_alive = keep_alive and delivery.keep_alive
                if not (waiting and waiting[0].ready) or not keep_alive:
                    streams = protocol.stream_endpoint
                    if streams is not None:
                        # The frames of these deliveries leave now, before their
                        # answers, not a loop turn later.
                        streams.hub.socket_writes.flush()
                    # Everything answerable now leaves in one write.
                    if not protocol.transport.is_closing():
                        protocol.transport.write(b"".join(out))
                    out.clear()
                    if not keep_alive:
                        protocol.transport.close()
                        return
        finally:
            self._task = None
        if not waiting and not protocol.transport.is_closing():
            # Resumes reading, arms the keep-alive timeout, starts a request uvicorn
            # queued behind these.
            protocol.on_response_complete()
        elif waiting:
            protocol.flow.resume_reading()
