"""A ``GET /events`` request served on the socket, with no ASGI cycle under it.

The HTTP protocol (:mod:`.protocol`) hands a stream request here instead of
to the application.  One short task authenticates and opens the stream; from
then on the stream has no task, no coroutine and no queue of its own: the
hub's fan-out leaves each event's bytes, framed once as an HTTP chunk for
every stream, in the stream's :class:`~.socket_outlet.SocketOutlet`, which hands a
turn's frames to the transport in one write; the transport's write buffer
is the stream's bounded queue.

:class:`SocketStream` stands in for uvicorn's request cycle on the
connection, so uvicorn's own connection handling (keep-alive, pipelined
requests queued behind this one, disconnects, shutdown) works unchanged: it
carries the few attributes uvicorn's protocol reads and writes on a cycle.
A refusal (401, 429, 503, the preflight) or a stream that ended is an
ordinary response, after which the connection serves its next request; a
stream cut as a slow consumer closes the connection.  HTTP/1.0 clients get
the stream without chunked framing, ended by the end of the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .connection import Connection
from .errors import CloseReason
from .log_setup import access_line
from .socket_outlet import SocketOutlet
from .stream import STREAM_HEADERS, Response, StreamEndpoint

__all__ = ["SocketStream", "StreamHeads", "StreamHost"]

logger = logging.getLogger(__name__)

_STATUS = {200: b"OK", 204: b"No Content", 401: b"Unauthorized", 405: b"Method Not Allowed",
           429: b"Too Many Requests", 500: b"Internal Server Error",
           503: b"Service Unavailable"}


class _Discard:
    """A request body sink: a stream request's body, if any, is not read."""

    __slots__ = ()

    def __iadd__(self, data: bytes) -> _Discard:
        return self

    def __len__(self) -> int:
        return 0


_DISCARD = _Discard()


class StreamHeads:
    """The head of a stream's response, built once per second, not once per stream:
    it changes only with uvicorn's default headers (a new list each second, for
    the ``date`` header), the CORS headers and the HTTP version."""

    __slots__ = ("_defaults", "_heads")

    def __init__(self) -> None:
        self._defaults: object = None
        self._heads: dict[tuple[bool, tuple[tuple[bytes, bytes], ...]], bytes] = {}

    def head(self, defaults: list[tuple[bytes, bytes]], cors: list[tuple[bytes, bytes]],
             chunked: bool) -> bytes:
        if defaults is not self._defaults:
            self._defaults = defaults
            self._heads.clear()
        key = (chunked, tuple(cors))
        head = self._heads.get(key)
        if head is None:
            lines = [b"HTTP/1.1 200 OK\r\n"]
            for name, value in (*defaults, *STREAM_HEADERS, *cors):
                lines += [name, b": ", value, b"\r\n"]
            # HTTP/1.0 has no chunks: the end of the stream is the end of the connection.
            lines.append(b"transfer-encoding: chunked\r\n" if chunked
                         else b"connection: close\r\n")
            head = self._heads[key] = b"".join(lines) + b"\r\n"
        return head


class _ServerState(Protocol):
    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]: ...


class StreamHost(Protocol):
    """What a stream needs of the connection's protocol: :class:`~.stream_protocol.
    StreamProtocol`, or :class:`~.protocol.BoundedHttpProtocol` for a stream
    request that came behind another request."""

    @property
    def transport(self) -> asyncio.Transport: ...
    @property
    def server_state(self) -> _ServerState: ...
    @property
    def stream_heads(self) -> StreamHeads: ...
    @property
    def access_log(self) -> bool: ...
    @property
    def access_logger(self) -> logging.Logger: ...
    @property
    def client(self) -> tuple[str, int] | None: ...

    def on_response_complete(self) -> None:
        """The response is complete and the connection stays open for the next request."""


class SocketStream:
    __slots__ = ("_protocol", "_endpoint", "_http_version", "conn", "response_complete",
                 "disconnected", "keep_alive", "more_body", "body")

    def __init__(
        self,
        protocol: StreamHost,
        endpoint: StreamEndpoint,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self._protocol = protocol
        self._endpoint = endpoint
        self._http_version = http_version
        self.conn: Connection | None = None
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.more_body = True
        #: uvicorn's protocol adds what it parses of a request body here and calls
        #: ``cycle.message_event.set()``; neither means anything to a stream.
        self.body = _DISCARD

    @property
    def message_event(self) -> SocketStream:
        return self

    def set(self) -> None:
        """Nothing waits on a stream's request events."""

    async def run(self, method: str, headers: dict[str, str], target: bytes,
                  query: bytes) -> None:
        try:
            result, cors = await self._endpoint.respond(method, headers, query)
        except Exception:
            logger.exception("opening a stream failed")
            result, cors = Response(500, [(b"content-length", b"0")]), []
        protocol = self._protocol
        self._log(method, target, 200 if isinstance(result, Connection) else result.status)
        if isinstance(result, Response):
            self._respond(result, method)
            return
        conn = result
        if self.disconnected:
            # The client left while the stream was being opened.
            conn.close(CloseReason.CLIENT_DISCONNECTED, flush=False)
            self._endpoint.hub.close(conn)
            return
        chunked = self._http_version == "1.1"
        self.conn = conn
        hub = self._endpoint.hub
        outlet = SocketOutlet(protocol.transport, chunked, hub.queue_bytes, self._ended,
                              hub.socket_writes)
        head = protocol.stream_heads.head(protocol.server_state.default_headers, cors, chunked)
        conn.serve_on(outlet, head, self._endpoint.preamble())

    def lost(self) -> None:
        """The connection is gone (the protocol's ``connection_lost``)."""
        self.disconnected = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close(CloseReason.CLIENT_DISCONNECTED, flush=False)
            self._endpoint.hub.close(conn)

    def drained(self) -> None:
        conn = self.conn
        if conn is not None and isinstance(conn.outlet, SocketOutlet):
            conn.outlet.drained()

    def _ended(self, reusable: bool) -> None:
        # The outlet wrote the closing frame (and the last chunk).
        self.response_complete = True
        conn, self.conn = self.conn, None
        if conn is not None:
            self._endpoint.hub.close(conn)
        protocol = self._protocol
        if protocol.transport.is_closing():
            return
        if reusable and self.keep_alive:
            protocol.on_response_complete()
        else:
            protocol.transport.close()

    def _respond(self, response: Response, method: str) -> None:
        protocol = self._protocol
        if self.disconnected or protocol.transport.is_closing():
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (response.status, _STATUS.get(response.status, b""))]
        for name, value in (*protocol.server_state.default_headers, *response.headers):
            head += [name, b": ", value, b"\r\n"]
        if response.status == 204:
            pass
        elif not any(name == b"content-length" for name, _ in response.headers):
            head.append(b"content-length: %d\r\n" % len(response.body))
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if method != "HEAD":
            head.append(response.body)
        protocol.transport.write(b"".join(head))
        self.response_complete = True
        if self.keep_alive:
            protocol.on_response_complete()
        else:
            protocol.transport.close()

    def _log(self, method: str, target: bytes, status: int) -> None:
        protocol = self._protocol
        if not protocol.access_log:
            return
        peer = protocol.client
        access_line(protocol.access_logger, f"{peer[0]}:{peer[1]}" if peer else "-", method,
                    target.decode("latin-1"), self._http_version, status)
