"""Unwrapping what daprd delivers into the publisher's payload (pure, no I/O).

daprd sends one of (see docs/dapr.md):

* a CloudEvent whose ``data`` is the JSON object (publisher set
  ``datacontenttype: application/json``);
* a CloudEvent whose ``data`` is a JSON *string* (the publisher left the
  default ``text/plain``);
* a CloudEvent with ``data_base64`` (raw payload subscriptions, octet-stream
  publishers); its bytes may themselves be a whole CloudEvent;
* the publisher's bare JSON (a non-Dapr producer wrote to the topic).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import EventError

__all__ = ["Envelope", "dedupe_key", "unwrap"]


@dataclass(frozen=True, slots=True)
class Envelope:
    cloudevent_id: str | None
    payload: object
    source: str = ""


def _loads(raw: bytes | str, what: str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise EventError(f"{what} is not valid JSON") from None


def _is_cloudevent(value: object) -> bool:
    return isinstance(value, dict) and "specversion" in value and (
        "data" in value or "data_base64" in value
    )


def unwrap(event: object, depth: int = 0) -> Envelope:
    """Return the payload inside ``event`` (an already decoded JSON value)."""
    if not _is_cloudevent(event):
        return Envelope(None, event)
    assert isinstance(event, dict)
    ce_id = event.get("id")
    ce_id = str(ce_id) if ce_id not in (None, "") else None
    source = str(event.get("source") or "")
    if "data_base64" in event:
        encoded = event["data_base64"]
        if not isinstance(encoded, str):
            raise EventError("data_base64 is not a string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("data_base64 is not valid base64") from None
        payload = _loads(raw, "data_base64 payload")
    else:
        payload = event["data"]
        if isinstance(payload, str):
            payload = _loads(payload, "string data")
    if _is_cloudevent(payload) and depth == 0:
        # A raw-payload subscription wraps the publisher's CloudEvent, and
        # daprd draws a new id for every redelivery: the inner id is the stable one.
        inner = unwrap(payload, depth + 1)
        if inner.cloudevent_id is not None:
            return inner
        return Envelope(ce_id, inner.payload, source)
    return Envelope(ce_id, payload, source)


def dedupe_key(envelope: Envelope, metadata: Mapping[str, str], data: bytes) -> str:
    """A key that is the same on every redelivery of one published event."""
    if envelope.cloudevent_id is not None:
        # CloudEvents promise uniqueness of source + id, not of id alone.
        return f"ce:{len(envelope.source)}:{envelope.source}:{envelope.cloudevent_id}"
    topic, partition, offset = (metadata.get(k) for k in ("__topic", "__partition", "__offset"))
    if topic and partition and offset:
        return f"kafka:{topic}:{partition}:{offset}"
    return "sha256:" + hashlib.sha256(data).hexdigest()
