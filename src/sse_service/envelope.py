"""The delivery daprd makes for a JSON publish, built for our own publishers.

``sse-service publish`` and ``revoke`` POST it to the delivery route; the demo
page's publish form hands the same bytes and headers to the delivery endpoint
in process.  Either way the service reads exactly what daprd sends for a
publish with ``datacontenttype: application/json``: a CloudEvent 1.0 whose
``data`` is the payload object, compact JSON with the keys sorted.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .config import Settings

__all__ = ["CLI_SOURCE", "NO_TRACE", "cloudevent", "delivery_headers"]

#: A W3C traceparent that belongs to no trace (all-zero trace and span ids).
NO_TRACE = "00-00000000000000000000000000000000-0000000000000000-00"
#: The CloudEvent ``source`` of what the command line publishes.
CLI_SOURCE = "sse-service-cli"


def cloudevent(settings: Settings, payload: dict[str, Any], event_id: str | None = None,
               source: str = CLI_SOURCE) -> bytes:
    """The bytes daprd delivers for a JSON publish of ``payload``."""
    envelope = {
        "data": payload,
        "datacontenttype": "application/json",
        "id": event_id or str(uuid.uuid4()),
        "pubsubname": settings.pubsub_name,
        "source": source,
        "specversion": "1.0",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "topic": settings.topic,
        "traceid": NO_TRACE,
        "traceparent": NO_TRACE,
        "tracestate": "",
        "type": "com.dapr.event.sent",
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def delivery_headers(settings: Settings, app_token: bool = True) -> dict[str, str]:
    """The headers of a single delivery from daprd.

    With ``app_token`` they carry ``dapr-api-token`` when ``APP_API_TOKEN`` is
    set, as daprd's do; a caller that skips the HTTP route has no use for it.
    """
    headers = {
        "content-type": "application/cloudevents+json",
        "traceparent": NO_TRACE,
        "pubsubname": settings.pubsub_name,
    }
    if app_token and settings.app_api_token is not None:
        headers["dapr-api-token"] = settings.app_api_token.get_secret_value()
    return headers
