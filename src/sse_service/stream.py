"""``GET /events``: the stream, as a plain ASGI endpoint.

It is deliberately not an ``EventSourceResponse``: per stream it costs one
coroutine, one small disconnect watcher and a :class:`Connection`; keepalives
and expiry come from the hub's single ticker.  The writer sends everything
queued as one chunk, so a burst costs one write, not one per event.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from . import sse
from .auth import Authenticator
from .broker import Position
from .config import Settings
from .connection import Connection
from .errors import AuthError, CapacityError, ServiceError
from .hub import Hub

__all__ = ["COOKIE_NAME", "StreamEndpoint", "cors_headers"]

COOKIE_NAME = "sse_token"

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def cors_headers(origin: str | None, allowed: Iterable[str]) -> list[tuple[bytes, bytes]]:
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
        self._hub = hub
        self._auth = auth
        self._retry_ms = settings.retry_ms
        self._allow_query_token = settings.allow_query_token
        self._origins = frozenset(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED
        }
        cors = cors_headers(headers.get("origin"), self._origins)
        if scope["method"] == "OPTIONS":
            await self._preflight(send, cors)
            return
        if scope["method"] != "GET":
            await _send_json(send, 405, {"detail": "use GET"}, [(b"allow", b"GET, OPTIONS")])
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            conn = await self._open(headers, query)
        except ServiceError as exc:
            extra = list(cors)
            if isinstance(exc, AuthError):
                extra.append((b"www-authenticate", b'Bearer error="invalid_token"'))
            if isinstance(exc, CapacityError):
                extra.append((b"retry-after", str(exc.retry_after).encode()))
            await _send_json(send, exc.status_code, {"detail": exc.reason}, extra)
            return
        watcher = asyncio.ensure_future(_watch_disconnect(receive, conn))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": _STREAM_HEADERS + cors})
            await self._write(send, conn)
        finally:
            watcher.cancel()
            self._hub.close(conn)

    async def _open(self, headers: dict[str, str], query: dict[str, list[str]]) -> Connection:
        token = _bearer(headers.get("authorization")) or _cookie(headers.get("cookie"))
        if not token and self._allow_query_token:
            token = query.get("token", [""])[0]
        identity = await self._auth.authenticate(token)
        last_id = headers.get("last-event-id") or query.get("lastEventId", [""])[0]
        after = Position.parse(last_id) if last_id else None
        resync = "invalid_id" if last_id and after is None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (identity.expires_at - time.time())
        return await self._hub.open(identity.user_id, deadline, after, resync)

    async def _write(self, send: Send, conn: Connection) -> None:
        # Jitter spreads the reconnects of a whole deploy over a few seconds.
        retry = int(self._retry_ms * random.uniform(0.75, 1.25))
        chunk: bytes | None = sse.encode_retry(retry) + b": connected\n\n" + (conn.take() or b"")
        while chunk is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = conn.take()
            if chunk is None and not conn.closed:
                await conn.wait()
                chunk = conn.take()
        await send({
            "type": "http.response.body",
            "body": sse.encode_comment(f"closing: {conn.reason}"),
            "more_body": False,
        })

    async def _preflight(self, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        extra = cors + [
            (b"access-control-allow-methods", b"GET, OPTIONS"),
            (b"access-control-allow-headers", b"authorization, last-event-id, cache-control"),
            (b"access-control-max-age", b"600"),
        ] if cors else []
        await send({"type": "http.response.start", "status": 204, "headers": extra})
        await send({"type": "http.response.body", "body": b""})


_WANTED = frozenset({b"authorization", b"cookie", b"last-event-id", b"origin"})


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _cookie(value: str | None) -> str | None:
    for part in (value or "").split(";"):
        name, _, token = part.strip().partition("=")
        if name == COOKIE_NAME:
            return token.strip('"')
    return None


async def _watch_disconnect(receive: Receive, conn: Connection) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    conn.close("client_disconnected", flush=False)


async def _send_json(
    send: Send, status: int, body: dict[str, str], extra: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
