"""The Dapr routes: the programmatic subscription and the delivery endpoint.

``GET /dapr/subscribe`` is asked once per sidecar start and served by FastAPI.
``POST /task-updates`` is the ingest hot path: :class:`DeliveryEndpoint` is a
plain ASGI endpoint dispatched before FastAPI, and its :meth:`~DeliveryEndpoint.check`
and :meth:`~DeliveryEndpoint.answer` are what the socket path
(:mod:`.socket_delivery`) answers with too.  Both routes check daprd's app
token (``APP_API_TOKEN``) when one is configured.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from .bodies import declared_length, read_body
from .config import Settings
from .deliveries import Reply
from .errors import EventError
from .ingest import ROUTE, Ingest

__all__ = ["DeliveryEndpoint", "dapr_router", "subscription"]

logger = logging.getLogger(__name__)


def subscription(settings: Settings) -> list[dict[str, Any]]:
    if not settings.dapr_subscribe:
        # A declarative Subscription resource is in charge; announcing the
        # same topic here would make daprd ignore it.
        return []
    entry: dict[str, Any] = {
        "pubsubname": settings.pubsub_name,
        "topic": settings.topic,
        "route": ROUTE,
        "metadata": {},
        "bulkSubscribe": {"enabled": True, "maxMessagesCount": 100, "maxAwaitDurationMs": 40},
    }
    if settings.dead_letter_topic:
        entry["deadLetterTopic"] = settings.dead_letter_topic
    return [entry]


class _Denied:
    """The app token check of both Dapr routes (``APP_API_TOKEN``)."""

    def __init__(self, settings: Settings) -> None:
        token = settings.app_api_token
        self._token = token.get_secret_value().encode() if token is not None else None

    def __call__(self, given: str | None) -> bool:
        if self._token is None:
            return False
        return not hmac.compare_digest((given or "").encode("latin-1", "replace"), self._token)


_DENIED = {"detail": "missing or wrong dapr-api-token"}


class DeliveryEndpoint:
    """``POST /task-updates`` as a plain ASGI endpoint: the ingest hot path, dispatched
    before FastAPI's routing and middleware, which cost more than the ingest itself."""

    def __init__(self, ingest: Ingest, settings: Settings) -> None:
        self._ingest = ingest
        self._denied = _Denied(settings)
        self._limit = settings.max_delivery_bytes

    @property
    def limit(self) -> int:
        return self._limit

    def check(self, headers: Mapping[str, str]) -> Reply | None:
        """The reply to a request refused before its body matters, else None."""
        if self._denied(headers.get("dapr-api-token")):
            return Reply(_DENIED, 401)
        declared = declared_length(headers.get("content-length"))
        if declared is not None and declared > self._limit:
            reason = f"delivery of {declared} bytes exceeds SSE_MAX_DELIVERY_BYTES={self._limit}"
            return self._ingest.refuse(headers, reason)
        return None

    async def answer(self, headers: Mapping[str, str], body: bytes | None) -> Reply:
        """The reply to a whole body (None: it passed the limit while arriving)."""
        if body is None:
            reason = f"delivery exceeds SSE_MAX_DELIVERY_BYTES={self._limit}"
            return self._ingest.refuse(headers, reason)
        return await self._ingest.handle(body, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send_json(send, 405, b'{"detail":"use POST"}', [(b"allow", b"POST")])
            return
        # All of them: daprd passes a single delivery's broker metadata (Kafka
        # topic, partition, offset) as headers, and dedupe may need it.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self._denied(headers.get("dapr-api-token")):
            await _send_json(send, 401, Reply(_DENIED).body())
            return
        try:
            body = await read_body(receive, headers.get("content-length"), self._limit)
        except ClientDisconnect:
            logger.info("a delivery ended early: the client disconnected mid-body")
            return
        except EventError as exc:
            reply = self._ingest.refuse(headers, exc.reason)
        else:
            reply = await self._ingest.handle(body, headers)
        await _send_json(send, reply.status_code, reply.body())


async def _send_json(send: Send, status: int, payload: bytes,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", b"%d" % len(payload)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def dapr_router(settings: Settings) -> APIRouter:
    """``GET /dapr/subscribe``, asked once per sidecar start: FastAPI is fine for it."""
    denied = _Denied(settings)
    router = APIRouter(tags=["dapr"])

    @router.get("/dapr/subscribe")
    async def dapr_subscribe(request: Request) -> Response:
        if denied(request.headers.get("dapr-api-token")):
            return JSONResponse(_DENIED, status_code=401)
        return JSONResponse(subscription(settings))

    return router
