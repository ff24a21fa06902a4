"""Unwrapping what daprd delivers into the publisher's payload (pure, no I/O).

daprd sends one of (see docs/dapr.md):

* a CloudEvent whose ``data`` is the JSON object (publisher set
  ``datacontenttype: application/json``);
* a CloudEvent whose ``data`` is a JSON *string* (the publisher left the
  default ``text/plain``);
* a CloudEvent with ``data_base64`` (raw payload subscriptions, octet-stream
  publishers); its bytes may themselves be a whole CloudEvent;
* the publisher's bare JSON (a non-Dapr producer wrote to the topic).

The CloudEvent ``id`` and ``source`` become the dedupe key, so they must be
text every backend can store: a string of valid Unicode (a number is taken as
its decimal text).  Anything else is refused as a malformed event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import EventError
from .events import shown
from .jsondecode import loads

__all__ = ["Envelope", "dedupe_key", "is_unicode", "unwrap"]

#: Longer keys are stored as their hash: an id is bounded only by the delivery size.
_MAX_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class Envelope:
    cloudevent_id: str | None
    payload: object
    source: str = ""


def _loads(raw: bytes | str, what: str) -> object:
    try:
        return loads(raw)
    except RecursionError:
        raise EventError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise EventError(f"{what} is not valid JSON") from None


def _is_cloudevent(value: object) -> bool:
    return isinstance(value, dict) and "specversion" in value and (
        "data" in value or "data_base64" in value
    )


def is_unicode(text: str) -> bool:
    """True unless ``text`` holds a lone surrogate (which UTF-8 cannot encode)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _attribute(event: dict[str, object], name: str) -> str | None:
    """A CloudEvent attribute as text, None when absent or empty."""
    value = event.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if not is_unicode(value):
            raise EventError(f"CloudEvent {name} is not valid Unicode (a lone surrogate)")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise EventError(f"CloudEvent {name} is {shown(value)}, not a string")


def _envelope(event: dict[str, object], payload: object) -> Envelope:
    # Only the attributes that become the dedupe key are checked.
    ce_id = _attribute(event, "id")
    if ce_id is None:
        return Envelope(None, payload)
    return Envelope(ce_id, payload, _attribute(event, "source") or "")


def unwrap(event: object, depth: int = 0) -> Envelope:
    """Return the payload inside ``event`` (an already decoded JSON value)."""
    if not _is_cloudevent(event):
        return Envelope(None, event)
    assert isinstance(event, dict)
    payload: object
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
        return _envelope(event, inner.payload)
    return _envelope(event, payload)


def dedupe_key(envelope: Envelope, metadata: Mapping[str, object], data: bytes) -> str:
    """A key that is the same on every redelivery of one published event."""
    if envelope.cloudevent_id is not None:
        # CloudEvents promise uniqueness of source + id, not of id alone.
        source = envelope.source
        return _bounded("ce", f"{len(source)}:{source}:{envelope.cloudevent_id}")
    topic, partition, offset = (metadata.get(k) for k in ("__topic", "__partition", "__offset"))
    if (isinstance(topic, str) and isinstance(partition, str) and isinstance(offset, str)
            and topic and partition and offset):
        where = f"{topic}:{partition}:{offset}"
        # Bulk metadata is JSON, so it may hold text no backend can store.
        if is_unicode(where):
            return _bounded("kafka", where)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _bounded(kind: str, name: str) -> str:
    if len(name) + len(kind) < _MAX_KEY_CHARS:
        return f"{kind}:{name}"
    return f"{kind}-sha256:" + hashlib.sha256(name.encode()).hexdigest()
