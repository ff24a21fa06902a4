"""``GET /events``: what a stream request is answered, on either stream path.

:meth:`StreamEndpoint.respond` turns a request's method, headers and query
into either an opened :class:`Connection` or a complete :class:`Response`
(401, 429, 503, 405, the CORS preflight), with no I/O of its own.  Two paths
serve it:

* the socket path (:mod:`.socket_stream`), under ``sse-service serve``: the
  HTTP protocol takes the request over and the hub's fan-out writes frames
  straight to the transport;
* the portable ASGI endpoint, :meth:`StreamEndpoint.__call__`, for any other
  ASGI server (``uvicorn --factory sse_service.app:create_app``, hypercorn): one
  writer coroutine per stream sends whatever is queued as one chunk, and one
  small watcher notices the client leaving.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from . import sse
from .auth import Authenticator, credential
from .broker import Position
from .config import Settings
from .connection import Connection
from .errors import (
    AuthError,
    BackendUnavailable,
    CloseReason,
    ResyncReason,
    ServiceError,
)
from .hub import Hub
from .metrics import Refusal
from .outlet import QueueOutlet

__all__ = [
    "STREAM_HEADERS",
    "TRANSPORT_EXTENSION",
    "Response",
    "StreamEndpoint",
    "cors_headers",
]

#: Where :mod:`.protocol` puts the transport in an ASGI scope (not a standard
#: extension: ours, read only by this endpoint).
TRANSPORT_EXTENSION = "sse_service.transport"

Headers = list[tuple[bytes, bytes]]

STREAM_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
#: Request headers the stream reads; every other one is ignored.
WANTED = frozenset({b"authorization", b"cookie", b"last-event-id", b"origin"})


@dataclass(frozen=True, slots=True)
class Response:
    """A complete, small response: a refusal or the preflight."""

    status: int
    headers: Headers
    body: bytes = b""


def cors_headers(origin: str | None, allowed: Iterable[str]) -> Headers:
    """Credentialed CORS for an allowed origin (never ``*``: cookies need the exact origin)."""
    if origin is None or origin not in allowed:
        return []
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"retry-after"),
        (b"vary", b"origin"),
    ]


class StreamEndpoint:
    def __init__(self, hub: Hub, auth: Authenticator, settings: Settings) -> None:
        self.hub = hub
        self._auth = auth
        self._retry_ms = settings.retry_ms
        self._allow_query_token = settings.allow_query_token
        self._origins = frozenset(settings.cors_origins)

    async def respond(
        self, method: str, headers: Mapping[str, str], query_string: bytes
    ) -> tuple[Connection | Response, Headers]:
        """The opened stream (and the CORS headers of its response), or the answer."""
        cors = cors_headers(headers.get("origin"), self._origins)
        if method == "OPTIONS":
            return _preflight(cors), cors
        if method != "GET":
            return _json(405, "use GET", [(b"allow", b"GET, OPTIONS")]), cors
        query = parse_qs(query_string.decode("latin-1")) if query_string else {}
        try:
            return await self._open(headers, query), cors
        except ServiceError as exc:
            # The hub counts the limits it refuses; these two come from anywhere.
            if isinstance(exc, AuthError):
                self.hub.metrics.refused[Refusal.UNAUTHORIZED] += 1
            elif isinstance(exc, BackendUnavailable):
                self.hub.metrics.refused[Refusal.BACKEND_UNAVAILABLE] += 1
            return _json(exc.status_code, exc.reason, cors + exc.headers), cors

    def preamble(self) -> bytes:
        # Jitter spreads the reconnects of a whole deploy over a few seconds.
        retry = int(self._retry_ms * random.uniform(0.75, 1.25))
        # No blank line: these lines open the block of the stream's first event
        # (its ready or resync frame, or the first replayed one), since a block
        # of its own would reach some clients as a message without data.  The
        # comment still makes proxies flush the head at once.
        return sse.encode_retry(retry) + b": connected\n"

    async def _open(self, headers: Mapping[str, str], query: dict[str, list[str]]) -> Connection:
        token = credential(headers, query, self._allow_query_token)
        identity = await self._auth.authenticate(token)
        last_id = headers.get("last-event-id") or query.get("lastEventId", [""])[0]
        after = Position.parse(last_id) if last_id else None
        resync = ResyncReason.INVALID_ID if last_id and after is None else None
        deadline = self.hub.clock() + (identity.expires_at - time.time())
        return await self.hub.open(identity.user_id, deadline, after, resync,
                                   issued_at=identity.issued_at)

    # -- the portable ASGI endpoint ----------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in WANTED}
        result, cors = await self.respond(
            scope["method"], headers, scope.get("query_string", b"")
        )
        if isinstance(result, Response):
            await send({"type": "http.response.start", "status": result.status,
                        "headers": result.headers})
            await send({"type": "http.response.body", "body": result.body})
            return
        conn = result
        conn.attach(scope.get("extensions", {}).get(TRANSPORT_EXTENSION))
        watcher = asyncio.ensure_future(_watch_disconnect(receive, conn))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": STREAM_HEADERS + cors})
            await self._write(send, conn)
        finally:
            watcher.cancel()
            self.hub.close(conn)

    async def _write(self, send: Send, conn: Connection) -> None:
        outlet = conn.outlet
        assert isinstance(outlet, QueueOutlet)
        data = self.preamble() + (outlet.take() or b"")
        while not conn.closed:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            await outlet.wait()
            data = outlet.take() or b""
        # The outlet queued the closing frame when the stream was closed.
        await send({"type": "http.response.body", "body": data + (outlet.take() or b""),
                    "more_body": False})


def _preflight(cors: Headers) -> Response:
    extra = cors + [
        (b"access-control-allow-methods", b"GET, OPTIONS"),
        (b"access-control-allow-headers", b"authorization, last-event-id, cache-control"),
        (b"access-control-max-age", b"600"),
    ] if cors else []
    return Response(204, extra)


def _json(status: int, detail: str, extra: Headers) -> Response:
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), *extra]
    return Response(status, headers, payload)


async def _watch_disconnect(receive: Receive, conn: Connection) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    conn.close(CloseReason.CLIENT_DISCONNECTED, flush=False)
