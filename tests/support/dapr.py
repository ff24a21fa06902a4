"""Deliveries shaped as daprd sends them (see docs/dapr.md): headers and CloudEvents."""

from __future__ import annotations

import json
import uuid
from typing import Any

__all__ = ["DAPR_HEADERS", "NO_TRACE", "cloudevent", "task_event"]

NO_TRACE = "00-00000000000000000000000000000000-0000000000000000-00"
DAPR_HEADERS = {
    "content-type": "application/cloudevents+json",
    "traceparent": NO_TRACE,
    "pubsubname": "taskpubsub",
}


def cloudevent(payload: object, event_id: str | None = None, **fields: Any) -> bytes:
    """A delivery body as daprd sends it: compact JSON, keys sorted."""
    envelope = {
        "data": payload,
        "datacontenttype": "application/json",
        "id": event_id or str(uuid.uuid4()),
        "pubsubname": "taskpubsub",
        "source": "task-api",
        "specversion": "1.0",
        "time": "2026-11-27T08:00:00Z",
        "topic": "task-updates",
        "traceid": NO_TRACE,
        "traceparent": NO_TRACE,
        "tracestate": "",
        "type": "com.dapr.event.sent",
        **fields,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def task_event(user: str, task_id: int, kind: str = "task.created") -> dict[str, Any]:
    return {"event_type": kind, "user_id": user, "task": {"id": task_id, "title": f"t{task_id}"}}
