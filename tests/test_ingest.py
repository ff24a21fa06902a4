"""The Dapr side against a real server: what daprd 1.18 sends, read back as daprd reads it.

Requests carry exactly daprd's headers and bodies (compact JSON, sorted keys,
``application/cloudevents+json`` for single deliveries, ``application/json``
for bulk); replies are interpreted with :func:`daprd_outcome` and
:func:`daprd_bulk_outcomes`, which follow daprd's response tables.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sse_service.broker import Appended, Position
from sse_service.broker_memory import MemoryBroker
from sse_service.config import Settings
from sse_service.errors import BackendUnavailable
from sse_service.ingest import Ingest
from support import (
    DAPR_HEADERS,
    NO_TRACE,
    Service,
    aeventually,
    cloudevent,
    eventually,
    running_service,
    task_event,
)

pytestmark = pytest.mark.timeout(30)

MAX_EVENT_BYTES = 2048
APP_TOKEN = "app-token-5d0c1e"
BULK_HEADERS = {**DAPR_HEADERS, "content-type": "application/json"}

ACK, RETRY, DROP = "ack", "retry", "drop"


# -- how daprd reads replies -----------------------------------------------------


def daprd_outcome(response: httpx.Response) -> str:
    """daprd's reading of the reply to one delivery: ack, retry or drop.

    404 drops; any other non-2xx retries; a 2xx body that is empty, not JSON or
    not an object is a success; ``status`` "" or "SUCCESS" acks, "DROP" drops,
    "RETRY" and every other string (statuses are case-sensitive) retry.
    """
    if response.status_code == 404:
        return DROP
    if not 200 <= response.status_code < 300:
        return RETRY
    try:
        body = json.loads(response.content)
    except ValueError:
        return ACK
    if not isinstance(body, dict):
        return ACK
    status = body.get("status")
    if status is None or not isinstance(status, str):
        return ACK  # null decodes to ""; a wrong type is a decode error daprd ignores
    if status in ("", "SUCCESS"):
        return ACK
    if status == "DROP":
        return DROP
    return RETRY


def daprd_bulk_outcomes(response: httpx.Response, entry_ids: list[str]) -> dict[str, str]:
    """daprd's reading of a bulk reply: one outcome per entry it sent.

    404 drops every entry; another non-2xx, or a body that does not decode as
    ``{"statuses": [{"entryId": str, "status": str}]}``, retries every entry;
    otherwise SUCCESS acks, DROP drops, anything else or a missing entryId retries.
    """
    everything = dict.fromkeys(entry_ids)
    if response.status_code == 404:
        return {k: DROP for k in everything}
    if not 200 <= response.status_code < 300:
        return {k: RETRY for k in everything}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {k: RETRY for k in everything}
    statuses = body.get("statuses") if isinstance(body, dict) else "not an object"
    if statuses is None:
        statuses = []
    if not isinstance(statuses, list) or not all(
        isinstance(s, dict) and isinstance(s.get("entryId", ""), str)
        and isinstance(s.get("status", ""), str) for s in statuses
    ):
        return {k: RETRY for k in everything}
    given = {s.get("entryId", ""): s.get("status", "") for s in statuses}
    return {k: {"SUCCESS": ACK, "DROP": DROP}.get(given.get(k, ""), RETRY) for k in everything}


def reply(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(status, content=body)


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"status":"SUCCESS"}', ACK),
        (200, b"", ACK),
        (200, b"ok", ACK),
        (200, b"[]", ACK),
        (200, b"{}", ACK),
        (204, b"", ACK),
        (200, b'{"status":""}', ACK),
        (200, b'{"status":"RETRY"}', RETRY),
        (200, b'{"status":"DROP"}', DROP),
        (200, b'{"status":"success"}', RETRY),
        (200, b'{"status":"drop"}', RETRY),
        (404, b'{"status":"SUCCESS"}', DROP),
        (400, b'{"status":"SUCCESS"}', RETRY),
        (401, b"", RETRY),
        (500, b'{"status":"DROP"}', RETRY),
        (503, b"", RETRY),
    ],
)
def test_daprd_outcome_follows_the_contract_table(status, body, outcome):
    assert daprd_outcome(reply(status, body)) == outcome


@pytest.mark.parametrize(
    ("status", "body", "outcomes"),
    [
        (200, b'{"statuses":[{"entryId":"a","status":"SUCCESS"},{"entryId":"b","status":"DROP"}]}',
         {"a": ACK, "b": DROP}),
        (200, b'{"statuses":[{"entryId":"a","status":"SUCCESS"}]}', {"a": ACK, "b": RETRY}),
        (200, b'{"statuses":[{"entryId":"a","status":"RETRY"},{"entryId":"b","status":"x"}]}',
         {"a": RETRY, "b": RETRY}),
        (200, b"", {"a": RETRY, "b": RETRY}),
        (200, b"nope", {"a": RETRY, "b": RETRY}),
        (200, b'{"status":"SUCCESS"}', {"a": RETRY, "b": RETRY}),
        (404, b"", {"a": DROP, "b": DROP}),
        (500, b'{"statuses":[{"entryId":"a","status":"SUCCESS"}]}', {"a": RETRY, "b": RETRY}),
    ],
)
def test_daprd_bulk_outcomes_follow_the_contract_table(status, body, outcomes):
    assert daprd_bulk_outcomes(reply(status, body), ["a", "b"]) == outcomes


# -- services ----------------------------------------------------------------------


# The module's shared services run on both stream paths: deliveries reach the
# streams of either.


@pytest.fixture(scope="module", params=["socket", "asgi"])
def service(tmp_path_factory, request) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("ingest"), stream_path=request.param,
                         max_event_bytes=MAX_EVENT_BYTES) as svc:
        yield svc


@pytest.fixture(scope="module", params=["socket", "asgi"])
def guarded(tmp_path_factory, request) -> Iterator[Service]:
    """A service behind an app API token, as when daprd has ``APP_API_TOKEN``."""
    with running_service(tmp_path_factory.mktemp("guarded"), stream_path=request.param,
                         APP_API_TOKEN=APP_TOKEN) as svc:
        yield svc


def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def new_id() -> str:
    return str(uuid.uuid4())


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def expected_data(payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "task_update", "event": payload["event_type"], "task": payload["task"]}


def raw_payload_wrapper(broker_bytes: bytes, outer_id: str | None = None) -> bytes:
    """What daprd delivers to a ``rawPayload: "true"`` subscription: a new envelope
    with the broker bytes in ``data_base64`` and a fresh id on every delivery."""
    return compact({
        "data_base64": base64.b64encode(broker_bytes).decode(),
        "datacontenttype": "application/octet-stream",
        "id": outer_id or new_id(),
        "pubsubname": "taskpubsub",
        "source": "Dapr",
        "specversion": "1.0",
        "topic": "task-updates",
        "type": "com.dapr.event.sent",
    })


def kafka_metadata(offset: int, key: str = "t-1", partition: int = 0) -> dict[str, str]:
    return {"__key": key, "__offset": str(offset), "__partition": str(partition),
            "__timestamp": "1795766400000", "__topic": "task-updates"}


def bulk_entry(entry_id: str, event: object, metadata: dict[str, str] | None,
               content_type: str = "application/cloudevents+json") -> dict[str, Any]:
    return {"entryId": entry_id, "event": event, "metadata": metadata,
            "contentType": content_type}


def bulk_body(entries: list[dict[str, Any]]) -> bytes:
    """daprd's bulk envelope: top-level keys sorted, entries as daprd orders them."""
    return json.dumps({
        "entries": entries,
        "id": new_id(),
        "metadata": {"pubsubName": "taskpubsub"},
        "pubsubname": "taskpubsub",
        "topic": "task-updates",
        "type": "com.dapr.event.sent.bulk",
    }, separators=(",", ":")).encode()


def post_bulk(service: Service, entries: list[dict[str, Any]]) -> httpx.Response:
    return service.deliver(bulk_body(entries), BULK_HEADERS)


def log_line(service: Service, *parts: str, timeout: float = 10) -> str:
    """Wait for one log line containing every part; return it."""
    def found() -> str | None:
        lines = service.logs().splitlines()
        return next((line for line in lines if all(part in line for part in parts)), None)

    return str(eventually(found, timeout,
                          message=lambda: f"no log line with {parts!r}:\n{service.logs()[-4000:]}"))


async def assert_next_task(stream, task_id: int, timeout: float = 5) -> None:
    event = await stream.next(timeout)
    assert json.loads(event.data)["task"]["id"] == task_id, event


# -- GET /dapr/subscribe ----------------------------------------------------------

SUBSCRIBE_HEADERS = {"content-type": "application/json", "dapr-app-id": "sse-gateway"}


def check_daprd_types(entry: dict[str, Any]) -> None:
    """The field types daprd's strict decoder needs (a wrong type fails the whole
    decode, and no subscription starts)."""
    for name in ("pubsubname", "topic", "route", "deadLetterTopic"):
        if name in entry:
            assert isinstance(entry[name], str), name
    metadata = entry.get("metadata")
    assert metadata is None or (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ), metadata
    if "routes" in entry:
        routes = entry["routes"]
        assert isinstance(routes, dict)
        assert isinstance(routes.get("default", ""), str)
        for rule in routes.get("rules") or []:
            assert isinstance(rule["match"], str) and isinstance(rule["path"], str)
    if "bulkSubscribe" in entry:
        bulk = entry["bulkSubscribe"]
        assert isinstance(bulk, dict)
        assert isinstance(bulk.get("enabled", False), bool)
        for name in ("maxMessagesCount", "maxAwaitDurationMs"):
            value = bulk.get(name, 0)
            assert type(value) is int and -(2**31) <= value < 2**31, (name, value)
    route = entry.get("route") or (entry.get("routes") or {}).get("default")
    assert route, "daprd drops an entry without a route"


def test_subscribe_lists_one_subscription_daprd_can_decode(service):
    response = httpx.get(f"{service.url}/dapr/subscribe", headers=SUBSCRIBE_HEADERS, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert isinstance(document, list) and len(document) == 1
    check_daprd_types(document[0])
    assert document == [{
        "pubsubname": "taskpubsub",
        "topic": "task-updates",
        "route": "/task-updates",
        "metadata": {},
        "bulkSubscribe": {"enabled": True, "maxMessagesCount": 100, "maxAwaitDurationMs": 40},
    }]


def test_subscribe_follows_pubsub_topic_and_dead_letter_settings(start_service):
    svc = start_service(pubsub_name="orders-bus", topic="task-events",
                        dead_letter_topic="task-events-dlq")
    response = httpx.get(f"{svc.url}/dapr/subscribe", headers=SUBSCRIBE_HEADERS, timeout=5)
    assert response.status_code == 200
    (entry,) = response.json()
    check_daprd_types(entry)
    assert entry["pubsubname"] == "orders-bus"
    assert entry["topic"] == "task-events"
    assert entry["deadLetterTopic"] == "task-events-dlq"
    assert entry["route"] == "/task-updates"


def test_subscribe_announces_nothing_when_a_declarative_subscription_is_used(start_service):
    svc = start_service(dapr_subscribe=False)
    response = httpx.get(f"{svc.url}/dapr/subscribe", headers=SUBSCRIBE_HEADERS, timeout=5)
    assert response.status_code == 200
    assert response.json() == []
    # The route still takes deliveries from the declarative subscription.
    assert daprd_outcome(svc.deliver(cloudevent(task_event(user(), 1)))) == ACK


def test_subscribe_has_no_dead_letter_topic_unless_configured(service):
    (entry,) = httpx.get(f"{service.url}/dapr/subscribe", timeout=5).json()
    assert "deadLetterTopic" not in entry


def test_the_subscribed_route_accepts_deliveries(service):
    (entry,) = httpx.get(f"{service.url}/dapr/subscribe", timeout=5).json()
    response = httpx.post(f"{service.url}{entry['route']}", headers=DAPR_HEADERS, timeout=5,
                          content=cloudevent(task_event(user(), 1)))
    assert daprd_outcome(response) == ACK


# -- single deliveries: every envelope variant ---------------------------------------


def variant_object(payload: dict[str, Any], event_id: str) -> bytes:
    return cloudevent(payload, event_id)


def variant_json_string(payload: dict[str, Any], event_id: str) -> bytes:
    # A publisher that left the default content type: ``data`` is a JSON string.
    return cloudevent(json.dumps(payload), event_id, datacontenttype="text/plain")


def variant_raw_payload(payload: dict[str, Any], event_id: str) -> bytes:
    # rawPayload subscription: the base64 bytes are the publisher's whole CloudEvent.
    return raw_payload_wrapper(cloudevent(payload, event_id))


def variant_raw_publish(payload: dict[str, Any], event_id: str) -> bytes:
    # rawPayload subscription over a raw publish: the bytes are the bare JSON.
    return raw_payload_wrapper(json.dumps(payload).encode(), outer_id=event_id)


def variant_octet_stream(payload: dict[str, Any], event_id: str) -> bytes:
    # A publisher sending application/octet-stream: Dapr base64-encodes ``data``.
    return compact({
        "data_base64": base64.b64encode(json.dumps(payload).encode()).decode(),
        "datacontenttype": "application/octet-stream", "id": event_id,
        "pubsubname": "taskpubsub", "source": "task-api", "specversion": "1.0",
        "time": "2026-11-27T08:00:00Z", "topic": "task-updates", "traceid": NO_TRACE,
        "traceparent": NO_TRACE, "tracestate": "", "type": "com.dapr.event.sent",
    })


def variant_bare_json(payload: dict[str, Any], event_id: str) -> bytes:
    # A non-Dapr producer wrote plain JSON to the topic.
    return json.dumps(payload).encode()


VARIANTS = {
    "data-object": variant_object,
    "data-json-string": variant_json_string,
    "raw-payload-cloudevent": variant_raw_payload,
    "raw-payload-bare": variant_raw_publish,
    "data-base64": variant_octet_stream,
    "bare-json": variant_bare_json,
}


@pytest.mark.parametrize("variant", VARIANTS)
async def test_every_envelope_variant_reaches_the_stream(service, open_stream, variant):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    payload = {"event_type": "task.updated", "user_id": uid,
               "task": {"id": 7, "title": "caf\u00e9 \u2603", "tags": ["a", "b"], "done": False}}
    response = service.deliver(VARIANTS[variant](payload, new_id()))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "SUCCESS"}
    assert daprd_outcome(response) == ACK
    event = await stream.next()
    assert json.loads(event.data) == expected_data(payload)
    assert event.event == "message"


async def test_numeric_user_id_reaches_the_users_stream(service, open_stream):
    uid = str(uuid.uuid4().int % 10**12 + 10**12)
    stream = await open_stream(service, token=service.token(uid))
    payload = {"event_type": "task.deleted", "user_id": int(uid), "task": {"id": 3}}
    assert daprd_outcome(service.deliver(cloudevent(payload))) == ACK
    assert json.loads((await stream.next()).data) == expected_data(payload)


async def test_events_reach_only_their_users_stream(service, open_stream):
    alice, bob = user(), user()
    a = await open_stream(service, token=service.token(alice))
    b = await open_stream(service, token=service.token(bob))
    service.publish(bob, 1)
    service.publish(alice, 2)
    await assert_next_task(a, 2)
    await assert_next_task(b, 1)


async def test_kafka_headers_and_tracing_headers_are_accepted(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    headers = {**DAPR_HEADERS, **kafka_metadata(11), "partitionKey": "t-1",
               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "tracestate": "congo=t61rcWkgMzE"}
    body = cloudevent(task_event(uid, 5), traceparent=headers["traceparent"],
                      traceid=headers["traceparent"])
    assert daprd_outcome(service.deliver(body, headers)) == ACK
    await assert_next_task(stream, 5)


# -- redelivery and dedupe ---------------------------------------------------------


async def test_redelivery_is_acknowledged_but_streamed_once(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    event_id = new_id()
    body = cloudevent(task_event(uid, 1), event_id)
    assert service.deliver(body).json() == {"status": "SUCCESS"}
    await assert_next_task(stream, 1)
    for _ in range(2):
        again = service.deliver(body)
        assert again.json() == {"status": "SUCCESS"} and daprd_outcome(again) == ACK
    service.publish(uid, 2)
    await assert_next_task(stream, 2)


async def test_raw_payload_redelivery_is_deduplicated_by_the_inner_id(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    inner = cloudevent(task_event(uid, 1), new_id())
    first, second = raw_payload_wrapper(inner), raw_payload_wrapper(inner)
    assert json.loads(first)["id"] != json.loads(second)["id"]
    assert daprd_outcome(service.deliver(first)) == ACK
    await assert_next_task(stream, 1)
    assert daprd_outcome(service.deliver(second)) == ACK
    service.publish(uid, 2)
    await assert_next_task(stream, 2)


async def test_same_cloudevent_id_for_two_users_is_two_events(service, open_stream):
    alice, bob = user(), user()
    a = await open_stream(service, token=service.token(alice))
    b = await open_stream(service, token=service.token(bob))
    shared = new_id()
    assert daprd_outcome(service.deliver(cloudevent(task_event(alice, 1), shared))) == ACK
    assert daprd_outcome(service.deliver(cloudevent(task_event(bob, 2), shared))) == ACK
    await assert_next_task(a, 1)
    await assert_next_task(b, 2)


async def test_bare_json_is_deduplicated_by_kafka_offset(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    body = json.dumps(task_event(uid, 1, "task.updated")).encode()
    at_offset_7 = {**DAPR_HEADERS, **kafka_metadata(7)}
    assert daprd_outcome(service.deliver(body, at_offset_7)) == ACK
    await assert_next_task(stream, 1)
    assert daprd_outcome(service.deliver(body, at_offset_7)) == ACK  # redelivery
    # The same bytes at another offset are a new event (a repeated update).
    assert daprd_outcome(service.deliver(body, {**DAPR_HEADERS, **kafka_metadata(8)})) == ACK
    await assert_next_task(stream, 1)
    service.publish(uid, 2)
    await assert_next_task(stream, 2)


# -- DROP: events no retry can fix ---------------------------------------------------


def with_payload(payload_for: Any) -> Any:
    return lambda uid, eid: cloudevent(payload_for(uid), eid)


def big_task(uid: str) -> dict[str, Any]:
    return {"event_type": "task.created", "user_id": uid,
            "task": {"id": 1, "title": "x" * MAX_EVENT_BYTES}}


DROPS = {
    "data-not-json": (lambda uid, eid: cloudevent("{not json", eid, datacontenttype="text/plain"),
                      "string data is not valid JSON"),
    "bad-base64": (lambda uid, eid: compact({
        "data_base64": "***not base64***", "datacontenttype": "application/octet-stream",
        "id": eid, "pubsubname": "taskpubsub", "source": "Dapr", "specversion": "1.0",
        "topic": "task-updates", "type": "com.dapr.event.sent"}), "not valid base64"),
    "base64-not-json": (lambda uid, eid: raw_payload_wrapper(b"\x00\xffbinary", eid),
                        "data_base64 payload is not valid JSON"),
    "no-user-id": (with_payload(lambda uid: {"event_type": "task.created", "task": {"id": 1}}),
                   "missing user_id"),
    "empty-user-id": (with_payload(lambda uid: {"event_type": "task.created", "user_id": "",
                                                "task": {"id": 1}}), "missing user_id"),
    "unknown-event-type": (with_payload(lambda uid: task_event(uid, 1, "task.exploded")),
                           "unknown event_type 'task.exploded'"),
    "no-event-type": (with_payload(lambda uid: {"user_id": uid, "task": {"id": 1}}),
                      "unknown event_type None"),
    "task-not-object": (with_payload(lambda uid: {"event_type": "task.created", "user_id": uid,
                                                  "task": [1, 2]}),
                        "task must be a JSON object"),
    "task-missing": (with_payload(lambda uid: {"event_type": "task.created", "user_id": uid}),
                     "task must be a JSON object"),
    "payload-not-object": (with_payload(lambda uid: [uid]), "not an object"),
    "too-large": (with_payload(big_task), f"exceeds SSE_MAX_EVENT_BYTES={MAX_EVENT_BYTES}"),
}


@pytest.mark.parametrize("case", DROPS)
def test_unfixable_event_is_dropped_with_a_warning_naming_id_and_reason(service, case):
    build, reason = DROPS[case]
    event_id = new_id()
    response = service.deliver(build(user(), event_id))
    assert response.status_code == 200
    # daprd reads the status; the reason beside it is for people (sse-service publish).
    assert response.json()["status"] == "DROP" and reason in response.json()["reason"]
    assert daprd_outcome(response) == DROP
    line = log_line(service, event_id)
    assert " WARNING " in line and reason in line, line


def test_malformed_json_body_is_dropped_with_a_warning(service):
    # Nothing in a body that is not JSON can be read, the CloudEvent id included.
    response = service.deliver(b'{"data":{"event_type":"task.created"},"id":"trunc')
    assert response.status_code == 200
    assert response.json()["status"] == "DROP" and response.json()["reason"]
    assert daprd_outcome(response) == DROP
    log_line(service, " WARNING ", "delivery", "body is not valid JSON")


def test_non_utf8_body_is_dropped(service):
    response = service.deliver(b"\xff\xfe{}")
    assert response.status_code == 200 and daprd_outcome(response) == DROP


async def test_dropped_events_never_reach_the_stream(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    for case, (build, _) in DROPS.items():
        assert daprd_outcome(service.deliver(build(uid, new_id()))) == DROP, case
    service.publish(uid, 99)
    await assert_next_task(stream, 99)


async def test_event_of_exactly_max_bytes_is_accepted(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    payload = {"event_type": "task.created", "user_id": uid, "task": {"id": 1, "title": ""}}
    size = len(json.dumps(expected_data(payload), separators=(",", ":")).encode())
    payload["task"]["title"] = "x" * (MAX_EVENT_BYTES - size)
    assert daprd_outcome(service.deliver(cloudevent(payload))) == ACK
    event = await stream.next()
    assert len(event.data.encode()) == MAX_EVENT_BYTES
    payload["task"]["title"] += "x"
    assert daprd_outcome(service.deliver(cloudevent(payload))) == DROP


# -- bulk deliveries ------------------------------------------------------------------


async def test_bulk_delivery_answers_one_status_per_entry_in_order(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    entries = [bulk_entry(str(i), json.loads(cloudevent(task_event(uid, i + 1))),
                          kafka_metadata(100 + i)) for i in range(3)]
    response = post_bulk(service, entries)
    assert response.status_code == 200
    assert response.json() == {"statuses": [
        {"entryId": "0", "status": "SUCCESS"},
        {"entryId": "1", "status": "SUCCESS"},
        {"entryId": "2", "status": "SUCCESS"},
    ]}
    assert daprd_bulk_outcomes(response, ["0", "1", "2"]) == {"0": ACK, "1": ACK, "2": ACK}
    assert await stream.tasks(3) == [1, 2, 3]


async def test_bulk_mixed_batch_gets_success_and_drop_per_entry(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    bad_json_id, unknown_id = new_id(), new_id()
    entries = [
        bulk_entry("0", json.loads(cloudevent(task_event(uid, 1))), kafka_metadata(200)),
        bulk_entry("1", json.loads(cloudevent("{oops", bad_json_id,
                                              datacontenttype="text/plain")),
                   kafka_metadata(201)),
        bulk_entry("2", json.loads(cloudevent(task_event(uid, 2, "task.renamed"), unknown_id)),
                   kafka_metadata(202)),
        bulk_entry("3", json.loads(cloudevent(task_event(uid, 4))), kafka_metadata(203)),
    ]
    response = post_bulk(service, entries)
    assert response.status_code == 200
    assert response.json() == {"statuses": [
        {"entryId": "0", "status": "SUCCESS"},
        {"entryId": "1", "status": "DROP"},
        {"entryId": "2", "status": "DROP"},
        {"entryId": "3", "status": "SUCCESS"},
    ]}
    assert daprd_bulk_outcomes(response, ["0", "1", "2", "3"]) == {
        "0": ACK, "1": DROP, "2": DROP, "3": ACK}
    assert await stream.tasks(2) == [1, 4]
    assert "string data is not valid JSON" in log_line(service, "WARNING", bad_json_id)
    assert "task.renamed" in log_line(service, "WARNING", unknown_id)


async def test_bulk_raw_payload_entries_and_whole_batch_redelivery(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    entries = [
        # rawPayload subscription: the event is the base64 of the broker bytes.
        bulk_entry("e-1", base64.b64encode(cloudevent(task_event(uid, 1))).decode(),
                   kafka_metadata(300), "application/octet-stream"),
        bulk_entry("e-2", base64.b64encode(json.dumps(task_event(uid, 2)).encode()).decode(),
                   kafka_metadata(301), "application/octet-stream"),
        bulk_entry("e-3", json.loads(cloudevent(task_event(uid, 3))), None),
    ]
    ids = ["e-1", "e-2", "e-3"]
    first = post_bulk(service, entries)
    assert daprd_bulk_outcomes(first, ids) == dict.fromkeys(ids, ACK)
    assert await stream.tasks(3) == [1, 2, 3]
    # Kafka re-sends the whole batch when a later entry failed: all acked, none repeated.
    again = post_bulk(service, entries)
    assert daprd_bulk_outcomes(again, ids) == dict.fromkeys(ids, ACK)
    service.publish(uid, 4)
    assert await stream.tasks(1) == [4]


async def test_bulk_with_uuid_entry_ids_and_null_metadata(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    ids = [new_id(), new_id()]
    entries = [bulk_entry(ids[0], json.loads(cloudevent(task_event(uid, 1))), None),
               bulk_entry(ids[1], json.loads(cloudevent(task_event(uid, 2))), None)]
    response = post_bulk(service, entries)
    assert [s["entryId"] for s in response.json()["statuses"]] == ids
    assert daprd_bulk_outcomes(response, ids) == dict.fromkeys(ids, ACK)
    assert await stream.tasks(2) == [1, 2]


def test_bulk_with_malformed_entry_events_drops_those_entries(service):
    entries = [bulk_entry("0", "***", kafka_metadata(400), "application/octet-stream"),
               bulk_entry("1", 42, kafka_metadata(401)),
               bulk_entry("2", {"specversion": "1.0", "id": new_id(), "data": None}, None)]
    response = post_bulk(service, entries)
    assert daprd_bulk_outcomes(response, ["0", "1", "2"]) == {"0": DROP, "1": DROP, "2": DROP}


# -- the app API token ----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token", APP_TOKEN.upper(), APP_TOKEN + "x"])
def test_subscribe_needs_the_app_api_token(guarded, token):
    headers = dict(SUBSCRIBE_HEADERS)
    if token is not None:
        headers["dapr-api-token"] = token
    response = httpx.get(f"{guarded.url}/dapr/subscribe", headers=headers, timeout=5)
    assert response.status_code == 401  # daprd logs an error and subscribes to nothing
    assert "dapr-api-token" in response.json()["detail"]


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_delivery_without_the_right_app_api_token_is_retried(guarded, token):
    headers = dict(DAPR_HEADERS)
    if token is not None:
        headers["dapr-api-token"] = token
    response = guarded.deliver(cloudevent(task_event(user(), 1)), headers)
    assert response.status_code == 401
    assert daprd_outcome(response) == RETRY
    bulk = guarded.deliver(bulk_body([bulk_entry("0", json.loads(cloudevent(
        task_event(user(), 1))), None)]), {**BULK_HEADERS, **({"dapr-api-token": token}
                                                             if token is not None else {})})
    assert bulk.status_code == 401
    assert daprd_bulk_outcomes(bulk, ["0"]) == {"0": RETRY}


async def test_right_app_api_token_subscribes_and_delivers(guarded, open_stream):
    response = httpx.get(f"{guarded.url}/dapr/subscribe", timeout=5,
                         headers={**SUBSCRIBE_HEADERS, "dapr-api-token": APP_TOKEN})
    assert response.status_code == 200
    assert response.json()[0]["route"] == "/task-updates"
    uid = user()
    stream = await open_stream(guarded, token=guarded.token(uid))
    delivered = guarded.deliver(cloudevent(task_event(uid, 1)),
                                {**DAPR_HEADERS, "dapr-api-token": APP_TOKEN})
    assert delivered.json() == {"status": "SUCCESS"}
    await assert_next_task(stream, 1)


def test_health_probes_need_no_app_api_token(guarded):
    # daprd's app health probe is a bare GET without dapr-api-token.
    health = httpx.get(f"{guarded.url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{guarded.url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_readiness_reports_ready_and_counts_streams(start_service, open_stream):
    svc = start_service()

    def readiness() -> dict[str, Any]:
        response = httpx.get(f"{svc.url}/readyz", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        return response.json()

    assert readiness() == {"status": "ready", "streams": 0}
    stream = await open_stream(svc, token=svc.token(user()))
    assert readiness() == {"status": "ready", "streams": 1}
    await stream.close()
    await aeventually(lambda: readiness()["streams"] == 0, 10,
                      message="the closed stream is still counted")


class _FlakyBroker(MemoryBroker):
    """The memory backend, unavailable for the first append of one key."""

    def __init__(self, failing_key_part: str) -> None:
        super().__init__(history_size=100, history_ttl_seconds=3600)
        self.failing = failing_key_part

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        # As the contract says: what comes before the failure is stored, and
        # the failed item and every later one are reported failed.
        for index, (_, key, _) in enumerate(items):
            if self.failing and self.failing in key:
                self.failing = ""
                stored = await super().append_many(items[:index])
                failed = BackendUnavailable("redis is restarting")
                return [*stored, *[failed] * (len(items) - index)]
        return await super().append_many(items)


async def test_bulk_entries_after_a_retry_are_retried_to_keep_order() -> None:
    broker = _FlakyBroker("ce-2")
    ingest = Ingest(broker, Settings(jwt_secret="s"))
    entries = [
        {"entryId": str(n), "contentType": "application/cloudevents+json", "metadata": {},
         "event": json.loads(cloudevent(task_event("order", n), f"ce-{n}"))}
        for n in (1, 2, 3)
    ]
    body = json.dumps({"entries": entries, "id": "b", "pubsubname": "taskpubsub",
                       "topic": "task-updates", "type": "com.dapr.event.sent.bulk"}).encode()
    first = (await ingest.handle(body, {})).content
    assert [s["status"] for s in first["statuses"]] == ["SUCCESS", "RETRY", "RETRY"]
    # daprd sends the whole batch again: entry 1 is a duplicate, 2 and 3 go in, in order.
    second = (await ingest.handle(body, {})).content
    assert [s["status"] for s in second["statuses"]] == ["SUCCESS"] * 3
    replay = await broker.replay("order", Position(broker.epoch, 0))
    assert [json.loads(r.data)["task"]["id"] for r in replay.records] == [1, 2, 3]


async def test_dedupe_is_per_source_and_id() -> None:
    broker = MemoryBroker(history_size=100, history_ttl_seconds=3600)
    ingest = Ingest(broker, Settings(jwt_secret="s"))
    for source in ("billing", "planner", "planner"):
        body = cloudevent(task_event("src", 1), "seq-1", source=source)
        assert (await ingest.handle(body, {})).content["status"] == "SUCCESS"
    assert (await broker.replay("src", Position(broker.epoch, 0))).head.offset == 2


# -- poison input: never a 5xx, never an endless RETRY ---------------------------------

DEEP = 1500  # deeper than Python's JSON parser recurses
HUGE_INT = "9" * 5000  # more digits than Python converts to an int


def raw_json(document: object, **raw: str | bytes) -> bytes:
    """``compact(document)`` with each string ``"@name@"`` replaced by raw JSON text,
    for what json.dumps will not write: 1e400, huge integers, deep nesting, raw
    UTF-8 surrogates."""
    text = compact(document)
    for name, value in raw.items():
        text = text.replace(f'"@{name}@"'.encode(), value.encode() if isinstance(value, str)
                            else value)
    return text


def nested(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def in_task(uid: str, **task: Any) -> dict[str, Any]:
    return {"event_type": "task.updated", "user_id": uid, "task": {"id": 1, **task}}


def ce_object(payload: object, event_id: str, **fields: Any) -> dict[str, Any]:
    return json.loads(cloudevent(payload, event_id, **fields))


NOT_FINITE = "NaN or an infinite number"
SURROGATE = "lone surrogate"

#: case -> (body for a user and a CloudEvent id, reason logged, whether the line names the id)
POISON: dict[str, tuple[Any, str, bool]] = {
    "event-type-array": (lambda uid, eid: cloudevent(
        {"event_type": ["task.created"], "user_id": uid, "task": {}}, eid),
        "unknown event_type a JSON array", True),
    "event-type-object": (lambda uid, eid: cloudevent(
        {"event_type": {"task.created": 1}, "user_id": uid, "task": {}}, eid),
        "unknown event_type a JSON object", True),
    "surrogate-in-task": (lambda uid, eid: cloudevent(in_task(uid, title="\ud800"), eid),
                          SURROGATE, True),
    "surrogate-in-task-key": (lambda uid, eid: cloudevent(in_task(uid, **{"\udc00": 1}), eid),
                              SURROGATE, True),
    "raw-surrogate-bytes": (lambda uid, eid: raw_json(ce_object(in_task(uid, title="@s@"), eid),
                                                      s=b'"\xed\xa0\x80"'), SURROGATE, True),
    "surrogate-in-string-data": (lambda uid, eid: cloudevent(
        json.dumps(in_task(uid, title="\udbff")), eid, datacontenttype="text/plain"),
        SURROGATE, True),
    "nan": (lambda uid, eid: cloudevent(in_task(uid, score=float("nan")), eid), NOT_FINITE, True),
    "infinity": (lambda uid, eid: cloudevent(in_task(uid, score=float("inf")), eid),
                 NOT_FINITE, True),
    "minus-infinity": (lambda uid, eid: cloudevent(in_task(uid, score=-float("inf")), eid),
                       NOT_FINITE, True),
    "1e400": (lambda uid, eid: raw_json(ce_object(in_task(uid, score="@n@"), eid), n="1e400"),
              NOT_FINITE, True),
    "nan-in-string-data": (lambda uid, eid: cloudevent(
        f'{{"event_type":"task.created","user_id":"{uid}","task":{{"x":NaN}}}}', eid,
        datacontenttype="text/plain"), NOT_FINITE, True),
    "deep-string-data": (lambda uid, eid: cloudevent(
        json.dumps(in_task(uid, tree="@d@")).replace('"@d@"', nested()), eid,
        datacontenttype="text/plain"), "string data is nested too deeply", True),
    "deep-base64": (lambda uid, eid: raw_payload_wrapper(
        json.dumps(in_task(uid, tree="@d@")).replace('"@d@"', nested()).encode(), eid),
        "data_base64 payload is nested too deeply", True),
    "surrogate-id": (lambda uid, eid: cloudevent(in_task(uid), "\ud800" + eid),
                     "CloudEvent id is not valid Unicode", True),
    "surrogate-source": (lambda uid, eid: cloudevent(in_task(uid), eid, source="api-\udfff"),
                         "CloudEvent source is not valid Unicode", True),
    "id-object": (lambda uid, eid: cloudevent(in_task(uid), {"id": eid}),
                  "CloudEvent id is a JSON object, not a string", False),
    "deep-body": (lambda uid, eid: raw_json(ce_object(in_task(uid, tree="@d@"), eid), d=nested()),
                  "dropping a delivery: body is nested too deeply", False),
}


@pytest.mark.parametrize("case", POISON)
def test_poison_event_is_dropped_with_a_reason_never_a_server_error(service, case):
    build, reason, names_id = POISON[case]
    event_id = new_id()
    response = service.deliver(build(user(), event_id))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "DROP" and response.json()["reason"]
    line = log_line(service, event_id, reason) if names_id else log_line(service, reason)
    assert " WARNING " in line, line


async def test_poison_events_never_reach_the_stream(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=service.token(uid))
    for case, (build, _, _) in POISON.items():
        assert daprd_outcome(service.deliver(build(uid, new_id()))) == DROP, case
    service.publish(uid, 99)
    event = await stream.next()
    json.loads(event.data, parse_constant=lambda c: pytest.fail(f"{c} reached a browser"))
    assert json.loads(event.data)["task"]["id"] == 99


def poison_bulk(uid: str) -> tuple[bytes, list[str], list[int]]:
    """A bulk mixing valid entries with one of each poison: its body, the status
    expected per entry (in order), and the task ids that must be stored, in order."""
    entries: list[dict[str, Any]] = []
    expected: list[str] = []
    stored: list[int] = []

    def add(event: object, status: str) -> None:
        entries.append(bulk_entry(str(len(entries)), event, {"__key": uid}))
        expected.append(status)

    def valid() -> None:
        stored.append(len(entries))
        add(ce_object(task_event(uid, len(entries)), new_id()), "SUCCESS")

    poison = [
        {"event_type": ["task.created"], "user_id": uid, "task": {}},
        {"event_type": {"a": 1}, "user_id": uid, "task": {}},
        in_task(uid, title="\ud800"),
        in_task(uid, score=float("nan")),
        in_task(uid, score="@big@"),
        in_task(uid, tree="@deep@"),
        in_task(uid, n="@huge@"),
    ]
    valid()
    for payload in poison:
        add(ce_object(payload, new_id()), "DROP")
        valid()
    add(ce_object(in_task(uid), "\udfff" + new_id()), "DROP")
    add(ce_object(in_task(uid), new_id(), source="\ud800"), "DROP")
    # rawPayload entries: base64 of the broker bytes.
    add(base64.b64encode(cloudevent(in_task(uid, score=float("inf")))).decode(), "DROP")
    valid()
    body = raw_json({"entries": entries, "id": new_id(), "metadata": {"pubsubName": "taskpubsub"},
                     "pubsubname": "taskpubsub", "topic": "task-updates",
                     "type": "com.dapr.event.sent.bulk"},
                    big="1e400", deep=nested(), huge=HUGE_INT)
    return body, expected, stored


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_poison_bulk_entries_are_dropped_one_by_one_and_the_rest_stored_in_order(
        backend, request, start_service, open_stream):
    settings: dict[str, Any] = {}
    if backend == "redis":
        settings = {"backend": "redis", "redis_url": request.getfixturevalue("redis_server")().url}
    svc = start_service(**settings)
    uid = user()
    stream = await open_stream(svc, token=svc.token(uid))
    body, expected, stored = poison_bulk(uid)
    response = svc.deliver(body, BULK_HEADERS)
    assert response.status_code == 200, response.text
    statuses = response.json()["statuses"]
    assert [s["entryId"] for s in statuses] == [str(i) for i in range(len(expected))]
    assert [s["status"] for s in statuses] == expected
    ids = [s["entryId"] for s in statuses]
    assert set(daprd_bulk_outcomes(response, ids).values()) == {ACK, DROP}
    assert await stream.tasks(len(stored)) == stored
    # daprd re-sends a whole batch: the same answers, nothing stored twice.
    again = svc.deliver(body, BULK_HEADERS)
    assert [s["status"] for s in again.json()["statuses"]] == expected
    svc.publish(uid, 1000)
    assert await stream.tasks(1) == [1000]


def test_lone_surrogate_in_id_or_source_is_dropped_on_redis(
        start_service, redis_server):
    svc = start_service(backend="redis", redis_url=redis_server().url)
    for fields in ({"event_id": "\ud800" + new_id()}, {"source": "billing-\udc00"}):
        response = svc.deliver(cloudevent(task_event(user(), 1), **fields))
        assert response.status_code == 200
        assert response.json()["status"] == "DROP" and response.json()["reason"], fields
    assert daprd_outcome(svc.deliver(cloudevent(task_event(user(), 2)))) == ACK


# -- request bodies: refused by size before they are read --------------------------------

CLOUDEVENTS = "application/cloudevents+json"


@dataclass
class RawReply:
    status: int
    body: bytes
    #: Body bytes handed to the socket when the reply's first byte arrived.
    sent_before_reply: int


def _parse_reply(data: bytes) -> tuple[int, bytes] | None:
    head, found, rest = data.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), 0)
    if len(rest) < length:
        return None
    return int(lines[0].split()[1]), rest[:length]


def post_raw(port: int, path: str, content_type: str, size: int, *, chunked: bool = False,
             stop_at_reply: bool = False, piece: int = 1 << 20, timeout: float = 30) -> RawReply:
    """POST ``size`` bytes (Content-Length or chunked framing) over a plain socket,
    reading the reply while sending; with ``stop_at_reply``, stop sending once it came."""
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {size}"
    head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n"
            f"traceparent: {NO_TRACE}\r\npubsubname: taskpubsub\r\n{framing}\r\n\r\n").encode()
    block = b"x" * piece
    frame = f"{piece:x}\r\n".encode() + block + b"\r\n" if chunked else block
    pending, sent, finished = memoryview(head), 0, False
    received = bytearray()
    first_reply_at: int | None = None
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setblocking(False)
        while True:
            reply = _parse_reply(bytes(received))
            if reply is not None and (stop_at_reply or (finished and not pending)):
                break
            if not pending and not finished:
                if sent < size:
                    pending, sent = memoryview(frame), sent + piece
                else:
                    pending, finished = memoryview(b"0\r\n\r\n" if chunked else b""), True
            sending = bool(pending) and not (stop_at_reply and first_reply_at is not None)
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.2)
            if readable:
                data = sock.recv(1 << 16)
                if not data:
                    break
                if first_reply_at is None:
                    first_reply_at = sent
                received += data
            if writable:
                try:
                    pending = pending[sock.send(pending):]
                except (BrokenPipeError, ConnectionResetError):
                    pending, finished = memoryview(b""), True
            assert time.monotonic() < deadline, f"no reply to {path} after {sent} bytes"
    reply = _parse_reply(bytes(received))
    assert reply is not None and first_reply_at is not None, bytes(received)
    return RawReply(reply[0], reply[1], first_reply_at)


def peak_rss(service: Service) -> int:
    """The service process's peak resident set size, in bytes (VmHWM)."""
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    (kib,) = (line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) * 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_delivery_is_dropped_before_its_body_is_read(start_service, chunked):
    svc = start_service(max_delivery_bytes=1 << 20)
    single = post_raw(svc.port, "/task-updates", CLOUDEVENTS, 64 << 20, chunked=chunked,
                      stop_at_reply=True)
    assert (single.status, json.loads(single.body)["status"]) == (200, "DROP")
    # A bulk whose entryIds cannot be read: a 200 would leave every entry to be
    # retried forever; daprd drops all of them on a 404.
    bulk = post_raw(svc.port, "/task-updates", "application/json", 64 << 20, chunked=chunked,
                    stop_at_reply=True)
    assert bulk.status == 404
    assert daprd_bulk_outcomes(reply(bulk.status, bulk.body), ["0", "1"]) == {"0": DROP, "1": DROP}
    for answer in (single, bulk):  # at most what socket buffers took meanwhile
        assert answer.sent_before_reply < 24 << 20, answer
    line = log_line(svc, "dropping a delivery", "exceeds SSE_MAX_DELIVERY_BYTES=1048576")
    assert " WARNING " in line
    assert daprd_outcome(svc.deliver(cloudevent(task_event(user(), 1)))) == ACK


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_the_limit_get_413_on_every_other_route(start_service, chunked):
    svc = start_service(demo_page=True, max_body_bytes=65_536)
    for path in ("/demo/token", "/demo/session", "/no/such/route", "/healthz"):
        answer = post_raw(svc.port, path, "application/json", 64 << 20, chunked=chunked,
                          stop_at_reply=True)
        assert answer.sent_before_reply < 24 << 20, (path, answer)
        if chunked and path in ("/no/such/route", "/healthz"):
            # Without a length the size is known only by reading, and these
            # routes read nothing: their own answer comes at once.
            assert answer.status in (404, 405), (path, answer)
            continue
        assert answer.status == 413, (path, answer)
        assert "65536" in json.loads(answer.body)["detail"]
    # Within the limit the route works as before.
    token = httpx.post(f"{svc.url}/demo/token", json={"user": "u-1", "note": "x" * 60_000},
                       timeout=5)
    assert token.status_code == 200 and token.json()["token"]


def test_memory_stays_bounded_while_huge_bodies_arrive(start_service):
    svc = start_service(demo_page=True, max_delivery_bytes=1 << 20)
    svc.publish(user(), 1)
    before = peak_rss(svc)
    size = 64 << 20
    cases = [("/task-updates", CLOUDEVENTS, 200), ("/task-updates", "application/json", 404),
             ("/demo/token", "application/json", 413)]
    answers = [(path, chunked, status, post_raw(svc.port, path, content_type, size,
                                                chunked=chunked))
               for path, content_type, status in cases for chunked in (False, True)]
    grown = peak_rss(svc) - before
    assert grown < 32 << 20, f"peak RSS grew by {grown >> 20} MiB over six 64 MiB bodies"
    for path, chunked, status, answer in answers:
        assert answer.status == status, (path, chunked, answer)
    assert daprd_outcome(svc.deliver(cloudevent(task_event(user(), 2)))) == ACK


def test_client_gone_mid_body_is_one_info_line_not_a_traceback(start_service):
    svc = start_service(demo_page=True)
    for path in ("/demo/token", "/task-updates"):
        with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {CLOUDEVENTS}\r\n"
                         f"content-length: 1000\r\n\r\n".encode() + b'{"data":{}')
    line = log_line(svc, "client disconnected mid-body")
    assert " INFO " in line
    assert daprd_outcome(svc.deliver(cloudevent(task_event(user(), 1)))) == ACK
    logs = svc.logs()
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]


# -- log lines: untrusted values can neither forge lines nor flood them ------------------


def test_untrusted_values_cannot_forge_or_flood_log_lines(start_service):
    svc = start_service()
    forged = "2026-01-01 00:00:00,000 ERROR sse_service.ingest: FORGED"
    evil = f"evil-{new_id()}\r\n{forged}\n"
    uid = user()
    dropped = svc.deliver(cloudevent(task_event(uid, 1, "task.exploded"), evil))
    assert dropped.json()["status"] == "DROP" and dropped.json()["reason"]
    for _ in range(2):  # the redelivery is logged with the id
        stored = svc.deliver(cloudevent(task_event(uid, 2), evil + "ok"))
        assert stored.json()["status"] == "SUCCESS"
    huge = svc.deliver(cloudevent(task_event(uid, 3, "x" * 1_000_000), "big-" + "y" * 1_000_000))
    assert huge.json()["status"] == "DROP" and huge.json()["reason"]
    bulk = svc.deliver(bulk_body([bulk_entry("0", ce_object(task_event(uid, 4, f"t\r\n{forged}"),
                                                            evil + "bulk"), None)]), BULK_HEADERS)
    assert bulk.json()["statuses"][0]["status"] == "DROP"
    log_line(svc, "already stored")
    log_line(svc, "unknown event_type 'xxxx")
    log_line(svc, "unknown event_type 't\\r\\n2026")
    lines = svc.logs().splitlines()
    assert not [line for line in lines if line.startswith(forged[:10])], "a forged line"
    assert [line for line in lines if "evil-" in line and "\\r\\n2026-01-01" in line]
    longest = max(lines, key=len)
    assert len(longest) < 600, longest[:300]


async def test_a_stored_event_holds_about_its_own_bytes_in_memory() -> None:
    # A history keeps every event up to SSE_HISTORY_SIZE: what one holds beyond
    # its line is multiplied by users times that size.
    broker = MemoryBroker(history_size=1000, history_ttl_seconds=3600)
    ingest = Ingest(broker, Settings(jwt_secret="s"))
    payload = {"event_type": "task.updated", "user_id": "u", "task": {"id": 1, "title": "t" * 300}}
    bodies = [cloudevent({**payload, "user_id": f"u{n % 20}"}, f"ce-{n}") for n in range(1000)]
    tracemalloc.start()
    try:
        for body in bodies:
            assert (await ingest.handle(body, DAPR_HEADERS)).content["status"] == "SUCCESS"
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    line = len(json.dumps({"type": "task_update", "event": "task.updated",
                           "task": payload["task"]}, separators=(",", ":")))
    assert held / len(bodies) < line + 600  # the line, its record, key and index entries
