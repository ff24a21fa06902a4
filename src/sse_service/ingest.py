"""The Dapr side: the programmatic subscription and the delivery route.

Replies follow daprd's reading of them (docs/dapr.md): ``SUCCESS`` once the
event is in the user's history and handed to local streams, ``DROP`` for an
event no retry can fix (logged at WARNING with the CloudEvent id and the
reason), ``RETRY`` for anything transient.  Bulk deliveries get one status
per entry, processed in order so one user's events keep their order.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .broker import Broker
from .cloudevents import dedupe_key, unwrap
from .config import Settings
from .errors import BackendUnavailable, DaprStatus, EventError
from .events import parse_task_event

__all__ = ["Ingest", "dapr_router", "subscription"]

logger = logging.getLogger(__name__)

ROUTE = "/task-updates"


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


@dataclass(frozen=True, slots=True)
class _Ready:
    """A delivery that passed validation: what to append, and its name for logs."""

    user_id: str
    key: str
    data: bytes
    name: str


class Ingest:
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self._broker = broker
        self._max_bytes = settings.max_event_bytes

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        limit = self._max_bytes * 200 + 1_048_576
        if len(body) > limit:
            logger.warning("dropping a delivery of %d bytes: larger than %d", len(body), limit)
            return {"status": DaprStatus.DROP.value}
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            logger.warning("dropping a delivery: body is not valid JSON")
            return {"status": DaprStatus.DROP.value}
        if _is_bulk(document):
            return {"statuses": await self._bulk(document["entries"])}
        (status,) = await self.store([(document, headers)])
        return {"status": status.value}

    async def store(self, deliveries: list[tuple[object, Mapping[str, str]]]) -> list[DaprStatus]:
        """Validate each delivery, append the valid ones in order (one batch), never raise."""
        statuses: list[DaprStatus] = []
        ready: list[tuple[int, _Ready]] = []
        for index, (event, metadata) in enumerate(deliveries):
            item = self._prepare(event, metadata)
            if item is None:
                statuses.append(DaprStatus.DROP)
            else:
                ready.append((index, item))
                statuses.append(DaprStatus.RETRY)
        if not ready:
            return statuses
        try:
            results = await self._broker.append_many([(r.user_id, r.key, r.data) for _, r in ready])
        except Exception:
            logger.exception("asking Dapr to retry %d events: unexpected error", len(ready))
            return statuses
        for (index, item), result in zip(ready, results, strict=True):
            if isinstance(result, BackendUnavailable):
                # Later items failed too (append_many keeps order): daprd retries them all.
                logger.warning("asking Dapr to retry CloudEvent %s: %s", item.name, result.reason)
                continue
            statuses[index] = DaprStatus.SUCCESS
            if result.duplicate:
                logger.info("CloudEvent %s already stored as %s; acknowledged again",
                            item.name, result.record.position)
        return statuses

    def _prepare(self, event: object, metadata: Mapping[str, str]) -> _Ready | None:
        """The event ready to append, or None after logging why it is dropped."""
        name = _id_of(event)
        try:
            envelope = unwrap(event)
            name = envelope.cloudevent_id or name
            task_event = parse_task_event(envelope.payload)
            data = task_event.data()
            if len(data) > self._max_bytes:
                raise EventError(
                    f"event of {len(data)} bytes exceeds SSE_MAX_EVENT_BYTES={self._max_bytes}"
                )
        except EventError as exc:
            logger.warning("dropping CloudEvent %s: %s", name, exc.reason)
            return None
        return _Ready(task_event.user_id, dedupe_key(envelope, metadata, data), data, name)

    async def _bulk(self, entries: list[Any]) -> list[dict[str, str]]:
        ids: list[str] = []
        deliveries: list[tuple[object, Mapping[str, str]]] = []
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("entryId"):
                logger.warning("skipping a bulk entry without entryId")
                continue
            event = entry.get("event")
            if isinstance(event, str):
                # rawPayload bulk entries carry the broker bytes as base64.
                event = {"specversion": "1.0", "id": None, "data_base64": event}
            metadata = entry.get("metadata")
            ids.append(str(entry["entryId"]))
            deliveries.append((event, metadata if isinstance(metadata, dict) else {}))
        statuses = await self.store(deliveries)
        return [{"entryId": i, "status": s.value} for i, s in zip(ids, statuses, strict=True)]


def _is_bulk(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("entries"), list) and (
        "specversion" not in document
    )


def _id_of(event: object) -> str:
    return str(event.get("id")) if isinstance(event, dict) and event.get("id") else "(no id)"


def dapr_router(ingest: Ingest, settings: Settings) -> APIRouter:
    token = settings.app_api_token.get_secret_value() if settings.app_api_token else None

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("dapr-api-token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def denied() -> Response:
        return JSONResponse({"detail": "missing or wrong dapr-api-token"}, status_code=401)

    router = APIRouter(tags=["dapr"])

    @router.get("/dapr/subscribe")
    async def dapr_subscribe(request: Request) -> Response:
        if not authorised(request):
            return denied()
        return JSONResponse(subscription(settings))

    @router.post(ROUTE)
    async def task_updates(request: Request) -> Response:
        if not authorised(request):
            return denied()
        return JSONResponse(await ingest.handle(await request.body(), request.headers))

    return router
