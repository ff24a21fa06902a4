"""Every envelope daprd delivers, read down to the publisher's payload (pure, no I/O).

A single delivery is one of (see docs/dapr.md):

* a CloudEvent whose ``data`` is the JSON object (publisher set
  ``datacontenttype: application/json``);
* a CloudEvent whose ``data`` is a JSON *string* (the publisher left the
  default ``text/plain``);
* a CloudEvent with ``data_base64`` (raw payload subscriptions, octet-stream
  publishers); its bytes may themselves be a whole CloudEvent;
* the publisher's bare JSON (a non-Dapr producer wrote to the topic).

A bulk delivery is ``{"entries": [...], ...}``; each entry names itself by
``entryId`` and carries ``event`` (one of the above, or for a rawPayload
subscription the broker's bytes as base64 text), ``contentType`` and the
broker's ``metadata``.  :func:`read_bulk` reads them; the reply names every
entry it returns, and cannot name one without a usable ``entryId``.

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
from typing import NamedTuple

from .errors import EventError
from .events import shown
from .jsondecode import loads

__all__ = ["Bulk", "Envelope", "Unreadable", "dedupe_key", "event_name", "is_bulk", "is_unicode",
           "read_bulk", "traceparent", "unwrap"]

#: Longer keys are stored as their hash: an id is bounded only by the delivery size.
_MAX_KEY_CHARS = 256


class Envelope(NamedTuple):
    cloudevent_id: str | None
    payload: object
    source: str = ""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A bulk entry's value the parser refused; the entry is dropped with this reason."""

    reason: str


@dataclass(slots=True)
class Bulk:
    """A bulk delivery read: each entry's ``entryId`` and its delivery, in order."""

    entry_ids: list[str]
    #: Each entry's ``event`` (what :func:`unwrap` reads) and broker ``metadata``.
    deliveries: list[tuple[object, Mapping[str, object]]]
    #: Entries left out: without an ``entryId`` the reply could name.
    skipped: int = 0


def is_bulk(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("entries"), list) and (
        "specversion" not in document
    )


def read_bulk(document: object) -> Bulk | None:
    """The entries of a bulk delivery; None when ``document`` is a single delivery.

    ``contentType`` is not read: the event says what it is.  A string is a
    rawPayload entry's broker bytes, as base64 (JSON has no bytes), and is read
    as a CloudEvent with ``data_base64`` and no id; so are bytes, already decoded.
    """
    if not is_bulk(document):
        return None
    assert isinstance(document, dict)
    bulk = Bulk([], [])
    for entry in document["entries"]:
        entry_id = entry.get("entryId") if isinstance(entry, dict) else None
        # The reply must name the entry in a string daprd can decode.
        if not isinstance(entry_id, str) or not entry_id or not is_unicode(entry_id):
            bulk.skipped += 1
            continue
        assert isinstance(entry, dict)
        event = entry.get("event")
        if isinstance(event, str | bytes):
            event = {"specversion": "1.0", "id": None, "data_base64": event}
        metadata = entry.get("metadata")
        bulk.entry_ids.append(entry_id)
        bulk.deliveries.append((event, metadata if isinstance(metadata, dict) else {}))
    return bulk


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
    if text.isascii():  # a flag of the string: no encoding, the usual answer
        return True
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
    # tuple.__new__: a NamedTuple's own __new__ is a Python function, a frame per call.
    return tuple.__new__(Envelope, (ce_id, payload, _attribute(event, "source") or ""))


def _raw(encoded: object) -> bytes:
    """The bytes of ``data_base64``: base64 text, or bytes already decoded."""
    if isinstance(encoded, bytes):
        return encoded
    if not isinstance(encoded, str):
        raise EventError("data_base64 is not a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("data_base64 is not valid base64") from None


def unwrap(event: object, depth: int = 0) -> Envelope:
    """Return the payload inside ``event`` (an already decoded JSON value)."""
    if not _is_cloudevent(event):
        if isinstance(event, Unreadable):
            raise EventError(f"event is {event.reason}")
        return Envelope(None, event)
    assert isinstance(event, dict)
    payload: object
    if "data_base64" in event:
        payload = _loads(_raw(event["data_base64"]), "data_base64 payload")
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


def event_name(event: object) -> str:
    """The event's CloudEvent id for log lines, before (or whether or not) it unwraps."""
    value = event.get("id") if isinstance(event, dict) else None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return "(no id)"


def traceparent(event: object, metadata: Mapping[str, object]) -> object:
    """daprd's ``traceparent`` header, or for a bulk entry its CloudEvent's own."""
    value = metadata.get("traceparent")
    if value is None and isinstance(event, dict):
        value = event.get("traceparent")
    return value


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
