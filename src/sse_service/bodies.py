"""Request bodies, read bounded.

No body is read whole before its size is known to be acceptable: a declared
``Content-Length`` over the limit is refused before a byte is read, a chunked
body the moment its count passes the limit (uvicorn discards the rest unbuffered).
:class:`BodyLimit` answers ``413`` on every route but the Dapr one, where
:func:`read_body` raises :class:`~sse_service.errors.EventError` instead, for
daprd retries every answer but 2xx and 404 forever.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import EventError
from .logs import escape

__all__ = ["BodyLimit", "declared_length", "read_body"]

logger = logging.getLogger(__name__)

#: Longest Content-Length value taken as a number (no body is that large anyway).
_MAX_LENGTH_DIGITS = 18


def declared_length(value: str | bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value) if len(value) <= _MAX_LENGTH_DIGITS else 10**_MAX_LENGTH_DIGITS


async def read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The whole body, or :class:`EventError` once it is known to exceed ``limit``.

    Raises ``ClientDisconnect`` when the client goes away mid-body.
    """
    declared = declared_length(content_length)
    if declared is not None and declared > limit:
        raise EventError(f"delivery of {declared} bytes exceeds SSE_MAX_DELIVERY_BYTES={limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EventError(f"delivery exceeds SSE_MAX_DELIVERY_BYTES={limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _TooLarge(Exception):
    """Raised from ``receive`` once a chunked body passes the limit."""


class BodyLimit:
    """ASGI middleware: ``413`` for a request body over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Collection[str] = ()) -> None:
        self._app = app
        self._limit = limit
        self._exempt = frozenset(exempt)
        self._refusal = json.dumps({"detail": f"request body over {limit} bytes"}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exempt:
            await self._app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = declared_length(value)
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and length > self._limit:
            await self._refuse(scope, send)
        elif chunked:
            await self._counted(scope, receive, send)
        else:
            # The server delivers no more than the declared length (none without one).
            await self._app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        over = started = False

        async def counting() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:
                # The app may have turned the error into an answer of its own
                # (FastAPI answers 400 to a body it could not read): ours wins.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(scope, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counting, guarded)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        logger.info("refusing a request body over %d bytes: %s %s", self._limit,
                    escape(scope.get("method", ""), 16), escape(scope.get("path", ""), 100))
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._refusal)).encode()),
        ]})
        await send({"type": "http.response.body", "body": self._refusal})


# -- decoding -----------------------------------------------------------------------
