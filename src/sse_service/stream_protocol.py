"""The first owner of every connection under ``sse-service serve``.

Nearly every connection to this service carries one request, ``GET /events``,
and then that stream for as long as it lives.  :class:`StreamProtocol`, made by
uvicorn's ``http=`` hook for each connection, reads the first request head with
httptools itself and, for a stream request (``GET`` or ``OPTIONS`` on
``/events``, no body, no upgrade), serves it through
:class:`~.socket_stream.SocketStream`: no uvicorn protocol object, flow control,
address look-up or request scope is made for it.

Anything else (another path or method, a head httptools refuses, a body) is
handed over with every byte read so far, before anything is answered, to
:class:`~.protocol.BoundedHttpProtocol` (uvicorn's own protocol with this
service's bounds) through the transport's public ``set_protocol``: uvicorn
serves it as if it had owned the connection from the start.  So is the rest of
a connection whose stream request was answered and which stays open (a
refusal, the preflight, a stream the service ended cleanly).

The head bounds are :mod:`.protocol`'s: ``SSE_MAX_HEADER_BYTES`` (``431``) and
``SSE_HEADER_TIMEOUT_SECONDS`` from the connection's first moment (``408``).
uvicorn's shutdown sees it as one of its own (``server_state.connections``,
``shutdown()``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import httptools

from .head_deadlines import HeadDeadlines
from .protocol import TIMED_OUT, TOO_LARGE, BoundedHttpProtocol, refuse
from .socket_stream import SocketStream, StreamHeads
from .stream import WANTED

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from .stream import StreamEndpoint

__all__ = ["StreamProtocol", "stream_protocol"]

#: Request lines this protocol reads on; any other is handed over at once.
_STREAM_LINES = (b"GET /events", b"OPTIONS /events")
_LONGEST = max(len(line) for line in _STREAM_LINES) + 1
_HEAD_END = b"\r\n\r\n"


def _maybe_stream(head: bytes) -> bool | None:
    """Whether a head that starts so may be a stream request; None: too short to tell."""
    for line in _STREAM_LINES:
        if head.startswith(line):
            if len(head) == len(line):
                return None
            return head[len(line)] in b" ?"
        if line.startswith(head):
            return None
    return False


class StreamProtocol(asyncio.Protocol):
    max_head_bytes: ClassVar[int] = 32_768
    #: Shared with the fallback, which arms the deadlines after a hand-over.
    head_deadlines: ClassVar[HeadDeadlines]
    stream_endpoint: ClassVar[StreamEndpoint]
    #: What serves a connection whose first request is no stream.
    fallback: ClassVar[type[BoundedHttpProtocol]]
    stream_heads: ClassVar[StreamHeads]
    access_logger: ClassVar[logging.Logger] = logging.getLogger("uvicorn.access")
    #: Whether the access log has handlers (as uvicorn asks), once per class.
    _access_log: ClassVar[bool | None] = None

    __slots__ = ("_config", "server_state", "_app_state", "loop", "transport", "cycle",
                 "_buffer", "_parser", "_url", "_headers", "_head_size", "_body",
                 "_hand_over_now", "_armed", "_task")

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._config = config
        self.server_state = server_state
        self._app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.cycle: SocketStream | None = None
        # Every byte received and not yet served: the head, then what follows it.
        self._buffer = b""
        self._parser: httptools.HttpRequestParser | None = None
        # The first request as parsed: target, wanted headers, head size, whether a body follows.
        self._headers: dict[str, str] = {}
        self._url, self._head_size, self._body = b"", 0, False
        self._hand_over_now = False
        self._armed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def access_log(self) -> bool:
        cls = type(self)
        if cls._access_log is None:
            cls._access_log = self.access_logger.hasHandlers()
        return cls._access_log

    @property
    def client(self) -> tuple[str, int] | None:
        peer = self.transport.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) > 1 else None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self._armed = True
        self.head_deadlines.arm(self, self.loop)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.cycle is not None:
            # Sent behind the stream request: kept for the next owner, within bounds.
            if len(self._buffer) > self.max_head_bytes:
                self.transport.close()
            return
        if self._parser is None:
            maybe = _maybe_stream(self._buffer[:_LONGEST])
            if maybe is None:
                return
            if not maybe:
                self._hand_over()
                return
            self._parser = httptools.HttpRequestParser(self)
            data = self._buffer
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Bytes behind a stream request are the next owner's business;
            # a head of its own that httptools refuses, uvicorn answers.
            self._hand_over_now = self._hand_over_now or self.cycle is None
        if self._hand_over_now:
            self._hand_over()
        elif self.cycle is None and len(self._buffer) > self.max_head_bytes:
            # The parser keeps an unfinished head: stopped one read past the budget.
            self._refuse(TOO_LARGE, "request head over %d bytes", self.max_head_bytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._cancel_timer()
        if self.cycle is not None:
            self.cycle.lost()

    def resume_writing(self) -> None:
        if self.cycle is not None:
            self.cycle.drained()

    def shutdown(self) -> None:
        """What uvicorn's server calls on each connection when it shuts down."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    # -- httptools callbacks, for the first request only -------------------------
    def on_url(self, url: bytes) -> None:
        if self.cycle is None:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.cycle is not None:
            return
        self._head_size += len(name) + len(value) + 4
        name = name.lower()
        if name in WANTED:
            self._headers[name.decode()] = value.decode("latin-1")
        elif name == b"content-length" or name == b"transfer-encoding":
            self._body = self._body or name == b"transfer-encoding" or value.strip() != b"0"

    def on_headers_complete(self) -> None:
        if self.cycle is not None or self._hand_over_now:
            return
        parser = self._parser
        assert parser is not None
        url = httptools.parse_url(self._url)
        if (url.path != b"/events" or self._body or parser.should_upgrade()
                or self._head_size + len(self._url) > self.max_head_bytes):
            # The fallback counts the head again and answers a long one with 431.
            self._hand_over_now = True
            return
        self._cancel_timer()
        self.server_state.total_requests += 1
        http_version = parser.get_http_version()
        end = self._buffer.find(_HEAD_END)
        # Reusable only where the next request can be told from this one.
        keep_alive = end >= 0 and http_version != "1.0" and parser.should_keep_alive()
        self._buffer = self._buffer[end + len(_HEAD_END):] if end >= 0 else b""
        stream = self.cycle = SocketStream(self, self.stream_endpoint, http_version, keep_alive)
        method = parser.get_method().decode("ascii")
        target, self._url = self._url, b""
        headers, self._headers = self._headers, {}
        self._parser = None  # nothing reads this request's parse state again
        self._task = self.loop.create_task(stream.run(method, headers, target, url.query or b""))

    def on_response_complete(self) -> None:
        """The stream request is answered and the connection reusable: the
        fallback serves whatever comes next on it."""
        self.cycle = None
        self._hand_over()

    def _hand_over(self) -> None:
        self._cancel_timer()
        self.server_state.connections.discard(self)
        transport, data = self.transport, self._buffer
        self._buffer, self._parser = b"", None
        successor = self.fallback(config=self._config, server_state=self.server_state,
                                  app_state=self._app_state, _loop=self.loop)
        transport.set_protocol(successor)
        successor.connection_made(transport)
        if data and not transport.is_closing():
            successor.data_received(data)

    def _cancel_timer(self) -> None:
        if self._armed:
            self._armed = False
            self.head_deadlines.disarm(self)

    def head_timed_out(self) -> None:
        """:class:`~.head_deadlines.HeadDeadlines` found this head past its deadline."""
        self._armed = False
        if self.cycle is None and not self.transport.is_closing():
            self._refuse(TIMED_OUT, "request head not received within %.1fs",
                         self.head_deadlines.timeout)

    def _refuse(self, response: bytes, reason: str, arg: float) -> None:
        self._cancel_timer()
        self._parser = None
        refuse(self.transport, self.client, response, reason, arg)


def stream_protocol(fallback: type[BoundedHttpProtocol],
                    endpoint: StreamEndpoint) -> type[StreamProtocol]:
    """The protocol class for uvicorn's ``http=``: streams served here, the rest by
    ``fallback`` (made by :func:`~.protocol.bounded_protocol`, whose bounds it shares)."""
    return type("StreamProtocol", (StreamProtocol,), {
        "__slots__": (), "max_head_bytes": fallback.max_head_bytes,
        "head_deadlines": fallback.head_deadlines,
        "stream_endpoint": endpoint,
        "fallback": fallback, "stream_heads": fallback.stream_heads,
    })
