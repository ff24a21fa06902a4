"""uvicorn's httptools protocol with the bounds a public endpoint needs.

uvicorn's own protocol reads a request head for as long as a client cares to send
it, and as large as it likes: one connection could hold hundreds of megabytes of
header, and a few hundred slow ones (slowloris) hold their sockets for good.
:class:`BoundedHttpProtocol`, given to uvicorn's public ``http=`` hook, adds:

* a head budget (``SSE_MAX_HEADER_BYTES``): bytes of request line and headers
  are counted as they arrive, before the parser buffers them; past the budget
  the client gets ``431`` and the connection is closed;
* a head deadline (``SSE_HEADER_TIMEOUT_SECONDS``): from the connection's first
  moment, and from the first byte of every later request on it, the whole head
  must arrive in time (give or take a quarter of the timeout: every head's
  deadline is kept by :mod:`.head_deadlines`, on one timer) or the connection
  gets ``408`` and is closed;
* the transport, in the ASGI scope under ``scope["extensions"]["sse_service.transport"]``,
  so a stream on the ASGI path can abort a client that stopped reading.

Under ``sse-service serve`` it serves what :mod:`.stream_protocol` hands it: a
``GET /events`` idle on it is taken over and served by
:class:`~sse_service.socket_stream.SocketStream`, deliveries by
:mod:`.socket_delivery`; everything else is uvicorn's, unchanged.  It relies
on ``HttpToolsProtocol``'s parser callbacks: the uvicorn versions it runs on
are pinned in ``pyproject.toml`` and exercised by ``tests/test_protocol.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings
from .head_deadlines import HeadDeadlines
from .ingest import ROUTE
from .socket_delivery import DeliveryQueue, SocketDelivery
from .socket_stream import SocketStream, StreamHeads
from .stream import TRANSPORT_EXTENSION, WANTED

if TYPE_CHECKING:
    from .dapr_routes import DeliveryEndpoint
    from .stream import StreamEndpoint

ROUTE_BYTES = ROUTE.encode()

__all__ = ["TIMED_OUT", "TOO_LARGE", "BoundedHttpProtocol", "bounded_protocol", "refuse"]

logger = logging.getLogger(__name__)


def _plain(status: bytes, text: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
    return head % (status, len(text)) + b"connection: close\r\n\r\n" + text


TOO_LARGE = _plain(b"431 Request Header Fields Too Large", b"request header fields too large")
TIMED_OUT = _plain(b"408 Request Timeout", b"request head not received in time")


class BoundedHttpProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = 32_768
    #: The armed head deadlines of this server's connections, and their timeout.
    head_deadlines: ClassVar[HeadDeadlines] = HeadDeadlines(10.0)
    #: Set to serve ``GET /events`` on the socket; None leaves it to the app.
    stream_endpoint: ClassVar[StreamEndpoint | None] = None
    #: Set to serve ``POST /task-updates`` on the socket; None leaves it to the app.
    delivery_endpoint: ClassVar[DeliveryEndpoint | None] = None
    #: The stream response heads of this server's connections.
    stream_heads: ClassVar[StreamHeads] = StreamHeads()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes received since the current head began, counted before parsing.
        self._head_bytes = 0
        self._in_head = True
        self._refused = False
        self._head_armed = False
        self._deliveries: DeliveryQueue | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        stream = self.cycle
        if isinstance(stream, SocketStream):
            stream.lost()
        super().connection_lost(exc)

    def resume_writing(self) -> None:
        super().resume_writing()
        stream = self.cycle
        if isinstance(stream, SocketStream):
            stream.drained()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # The parser buffers an unfinished head: stop it one read past the budget
        # (a read is at most a few hundred KiB), not at whatever the client sends.
        if self._in_head and self._head_bytes > self.max_head_bytes and not self._refused:
            self._refuse(TOO_LARGE, "request head over %d bytes", self.max_head_bytes)

    # -- parser callbacks ------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        if not self._head_armed:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        # Counted here, not per callback: catches a long head that came in one read with others.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._refuse(TOO_LARGE, "request head over %d bytes", self.max_head_bytes)
            return
        if self.stream_endpoint is not None and self._take_over():
            return
        # Not a standard ASGI extension: ours, read only by the stream endpoint.
        self.scope["extensions"] = {TRANSPORT_EXTENSION: self.transport}  # type: ignore[dict-item]
        super().on_headers_complete()

    def _take_over(self) -> bool:
        """Serve a stream request, or a delivery, here rather than through the app."""
        url = httptools.parse_url(self.url)
        if self.parser.should_upgrade():
            return False
        if url.path == ROUTE_BYTES:
            return self._take_over_delivery()
        endpoint = self.stream_endpoint
        assert endpoint is not None
        if url.path != b"/events":
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False  # pipelined behind another response: uvicorn queues it
        http_version = self.parser.get_http_version()
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        headers = {k.decode(): v.decode("latin-1") for k, v in self.headers if k in WANTED}
        stream = SocketStream(self, endpoint, http_version, keep_alive)
        self.cycle = stream  # type: ignore[assignment]
        method = self.parser.get_method().decode("ascii")
        task = self.loop.create_task(stream.run(method, headers, self.url, url.query or b""))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        # Nothing reads this request's parse state again; an idle stream should
        # not keep its headers (the token among them) alive.
        self.scope = self.headers = None  # type: ignore[assignment]
        self.url = b""
        return True

    def _take_over_delivery(self) -> bool:
        """A delivery on an idle connection, or pipelined behind other deliveries."""
        endpoint = self.delivery_endpoint
        cycle = self.cycle
        if endpoint is None or self.parser.get_method() != b"POST":
            return False
        if cycle is not None and not cycle.response_complete \
                and not isinstance(cycle, SocketDelivery):
            return False  # behind another kind of response: uvicorn queues it
        queue = self._deliveries
        if queue is None:
            queue = self._deliveries = DeliveryQueue(self)
        http_version = self.parser.get_http_version()
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        # All headers: daprd passes a single delivery's broker metadata in them.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        delivery = SocketDelivery(endpoint, headers, self.url, http_version, keep_alive,
                                  queue.kick, self.flow.resume_reading)
        self.cycle = delivery  # type: ignore[assignment]
        queue.add(delivery)
        return True

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # -- internals -------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._head_armed = True
        self.head_deadlines.arm(self, self.loop)

    def _cancel_head_timer(self) -> None:
        if self._head_armed:
            self._head_armed = False
            self.head_deadlines.disarm(self)

    def head_timed_out(self) -> None:
        """:class:`~.head_deadlines.HeadDeadlines` found this head past its deadline."""
        self._head_armed = False
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response (a live stream) is still going out; a half-sent
            # pipelined head behind it waits until that response is done.
            self._arm_head_timer()
            return
        if self._head_bytes == 0 and self.cycle is not None:
            return  # idle between requests: uvicorn's keep-alive timeout applies
        self._refuse(TIMED_OUT, "request head not received within %.1fs",
                     self.head_deadlines.timeout)

    def _refuse(self, response: bytes, reason: str, arg: float) -> None:
        self._refused = True
        self._cancel_head_timer()
        refuse(self.transport, self.client, response, reason, arg)


def refuse(transport: asyncio.Transport, client: tuple[str, int] | None, response: bytes,
           reason: str, arg: float) -> None:
    """Answer a head over its bounds with ``response`` and close (``reason`` % ``arg``, logged)."""
    logger.info("closing connection from %s: " + reason,
                f"{client[0]}:{client[1]}" if client else "unknown client", arg)
    if not transport.is_closing():
        transport.write(response)
        transport.close()


def bounded_protocol(
    settings: Settings,
    stream_endpoint: StreamEndpoint | None = None,
    delivery_endpoint: DeliveryEndpoint | None = None,
) -> type[BoundedHttpProtocol]:
    """The protocol class for uvicorn's ``http=``, carrying this service's bounds
    (and, given them, the endpoints whose requests it serves on the socket)."""
    return type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "head_deadlines": HeadDeadlines(settings.header_timeout_seconds),
            "stream_endpoint": stream_endpoint,
            "delivery_endpoint": delivery_endpoint,
            "stream_heads": StreamHeads(),
        },
    )

