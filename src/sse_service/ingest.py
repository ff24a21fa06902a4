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
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .broker import Broker
from .cloudevents import Envelope, dedupe_key, unwrap
from .config import Settings
from .errors import DaprStatus, EventError, dapr_status
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


class Ingest:
    def __init__(self, broker: Broker, settings: Settings) -> None:
        self._broker = broker
        self._max_bytes = settings.max_event_bytes

    async def deliver(self, event: object, metadata: Mapping[str, str]) -> DaprStatus:
        """Store one delivered event; never raises."""
        envelope = Envelope(None, None)
        try:
            envelope = unwrap(event)
            task_event = parse_task_event(envelope.payload)
            data = task_event.data()
            if len(data) > self._max_bytes:
                raise EventError(
                    f"event of {len(data)} bytes exceeds SSE_MAX_EVENT_BYTES={self._max_bytes}"
                )
            key = dedupe_key(envelope, metadata, data)
            appended = await self._broker.append(task_event.user_id, key, data)
        except EventError as exc:
            logger.warning(
                "dropping CloudEvent %s: %s", envelope.cloudevent_id or _id_of(event), exc.reason
            )
            return DaprStatus.DROP
        except Exception as exc:
            status = dapr_status(exc)
            logger.warning(
                "asking Dapr to retry CloudEvent %s: %s",
                envelope.cloudevent_id or _id_of(event),
                getattr(exc, "reason", repr(exc)),
            )
            return status
        if appended.duplicate:
            logger.info(
                "CloudEvent %s already stored as %s; acknowledged again",
                envelope.cloudevent_id, appended.record.position,
            )
        return DaprStatus.SUCCESS

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
        return {"status": (await self.deliver(document, headers)).value}

    async def _bulk(self, entries: list[Any]) -> list[dict[str, str]]:
        statuses = []
        retrying = False
        for entry in entries:
            if not isinstance(entry, dict) or not entry.get("entryId"):
                logger.warning("skipping a bulk entry without entryId")
                continue
            event = entry.get("event")
            if isinstance(event, str):
                # rawPayload bulk entries carry the broker bytes as base64.
                event = {"specversion": "1.0", "id": None, "data_base64": event}
            metadata = entry.get("metadata") or {}
            if retrying:
                # daprd redelivers the batch; storing later entries now would
                # put them ahead of the one that failed.
                status = DaprStatus.RETRY
            else:
                status = await self.deliver(event, metadata if isinstance(metadata, dict) else {})
                retrying = status is DaprStatus.RETRY
            statuses.append({"entryId": str(entry["entryId"]), "status": status.value})
        return statuses


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
