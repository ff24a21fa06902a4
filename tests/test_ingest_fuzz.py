"""Property: no delivery, however malformed, gets a 5xx or an endless RETRY.

Deliveries are generated with hypothesis: single CloudEvents of every envelope
shape the ingest accepts (``data`` object, ``data`` as a JSON string, raw
payload wrapping a CloudEvent or bare JSON, ``data_base64``, bare JSON), bulk
envelopes mixing valid and malformed entries (object and rawPayload base64
events, entries daprd could not have sent), and junk bodies.  Each is either
valid by construction or carries a poison that can never succeed: an
unhashable or unknown ``event_type``, a bad ``user_id`` or ``task``, NaN,
Infinity, 1e400, integers too long to convert, nesting deeper than MAX_DEPTH
and than Python's parser recurses, lone surrogates (escaped and as raw UTF-8
bytes) in the task, its keys, the CloudEvent id or source, non-string ids, bad
base64, oversized events.

Asserted, as daprd reads the replies: a valid event is SUCCESS and stored, in
order per user, as strict JSON; a poisoned one is DROP; in a bulk, per entry,
with the valid entries of the same bulk still stored in order.  RETRY only
when the backend is down.  Thousands of deliveries run in process against
:class:`~sse_service.ingest.Ingest` with the memory broker and with the Redis
broker on a real ``redis-server``; a few hundred go over HTTP to real services.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_service.broker import Appended, Broker, Position, Record
from sse_service.broker_memory import MemoryBroker
from sse_service.config import Settings
from sse_service.errors import BackendUnavailable
from sse_service.events import EVENT_TYPES, MAX_DEPTH
from sse_service.ingest import Ingest
from support import DAPR_HEADERS, NO_TRACE
from support.redis import RedisServer
from test_ingest import ACK, DROP, RETRY, daprd_bulk_outcomes, daprd_outcome

pytestmark = pytest.mark.timeout(120)

MAX_EVENT_BYTES = 8192
BULK_HEADERS = {**DAPR_HEADERS, "content-type": "application/json"}
_SEQ = itertools.count(1)


def fuzz(examples: int) -> Callable[[Any], Any]:
    # Derandomized and without a database: CI runs the same cases every time.
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# -- JSON text json.dumps will not write ---------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text placed verbatim: 1e400, huge integers, deep nesting."""

    text: str


def render(value: object, ascii_only: bool = True) -> str:
    """Compact JSON of ``value`` with every :class:`Raw` spliced in; NaN and
    Infinity come out as the literals Python's encoder writes for them."""
    raws: list[str] = []

    def placeholder(item: object) -> str:
        if not isinstance(item, Raw):
            raise TypeError(type(item).__name__)
        raws.append(item.text)
        return f"\x00raw{len(raws) - 1}\x00"

    text = json.dumps(value, default=placeholder, separators=(",", ":"), ensure_ascii=ascii_only)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{index}\x00"), raw)
    return text


def to_bytes(text: str) -> bytes:
    # A lone surrogate becomes its raw UTF-8 form, which json.loads reads back as one.
    return text.encode("utf-8", "surrogatepass")


# -- strategies ----------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
# Shallow on purpose: depth is a poison of its own (DEEP), and cheap to draw.
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=4), SCALARS,
                                                                   max_size=2)
TASKS = st.dictionaries(st.text(max_size=8), VALUES, max_size=3)
LONE = st.integers(0xD800, 0xDFFF).map(chr)
WITH_LONE = st.tuples(st.text(max_size=4), LONE, st.text(max_size=4)).map("".join)
NOT_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "2e308"])
# Past MAX_DEPTH, and past the ~1000 levels Python's parser recurses.
DEEP = st.tuples(st.integers(MAX_DEPTH, 200) | st.integers(1500, 3000),
                 st.sampled_from(["list", "object", "mixed"])).map(
    lambda spec: {"list": "[" * spec[0] + "]" * spec[0],
                  "object": '{"a":' * spec[0] + "0" + "}" * spec[0],
                  "mixed": '[{"k":' * spec[0] + "1" + "}]" * spec[0]}[spec[1]])
HUGE_INT = st.integers(4400, 6000).map(lambda digits: "7" * digits)
NOT_A_STRING = (st.lists(st.text(max_size=3), max_size=2)
                | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.booleans())
TYPES = st.sampled_from(sorted(EVENT_TYPES))
BAD_EVENT_TYPES = (st.lists(TYPES, max_size=2) | st.dictionaries(TYPES, st.integers(), max_size=2)
                   | st.integers() | st.floats() | st.none() | st.booleans() | WITH_LONE
                   | st.text(max_size=20).filter(lambda t: t not in EVENT_TYPES)
                   | st.just("x" * 100_000) | st.just("TASK.CREATED"))
BAD_USER_IDS = (st.just("") | st.booleans() | st.floats() | NOT_A_STRING | WITH_LONE
                | st.sampled_from(["a\nb", "a\x00", "\x1b[31m", "x" * 257]))
BAD_TASKS = st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
NOT_OBJECTS = st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)


@dataclass
class Expect:
    """What one delivery must come to: stored (with its client data) or dropped."""

    valid: bool
    user: str = ""
    data: dict[str, Any] | None = None


@st.composite
def payloads(draw: st.DrawFn, users: list[tuple[str, object]]) -> tuple[object, Expect]:
    """The publisher's event, valid or with one payload-level poison."""
    user, user_value = draw(st.sampled_from(users))
    task = {**draw(TASKS), "seq": next(_SEQ)}
    event_type = draw(st.sampled_from(sorted(EVENT_TYPES)))
    payload: dict[str, Any] = {"event_type": event_type, "user_id": user_value, "task": task}
    if draw(st.booleans()):
        payload["source_system"] = draw(VALUES)  # fields the service ignores
    poison = draw(st.sampled_from([None, None, None, "event_type", "user_id", "task",
                                   "not_finite", "surrogate", "surrogate_key", "deep",
                                   "huge_int", "too_large", "not_object"]))
    where = draw(st.sampled_from(["top", "list", "object"]))

    def plant(value: object) -> None:
        task["x"] = {"top": value, "list": [1, value], "object": {"y": value}}[where]

    if poison is None:
        return payload, Expect(True, user, {"type": "task_update", "event": event_type,
                                            "task": task})
    if poison == "event_type":
        payload["event_type"] = draw(BAD_EVENT_TYPES)
    elif poison == "user_id":
        if draw(st.booleans()):
            del payload["user_id"]
        else:
            payload["user_id"] = draw(BAD_USER_IDS)
    elif poison == "task":
        if draw(st.booleans()):
            del payload["task"]
        else:
            payload["task"] = draw(BAD_TASKS)
    elif poison == "not_finite":
        plant(Raw(draw(NOT_FINITE)))
    elif poison == "surrogate":
        plant(draw(WITH_LONE))
    elif poison == "surrogate_key":
        task[draw(WITH_LONE)] = 1
    elif poison == "deep":
        plant(Raw(draw(DEEP)))
    elif poison == "huge_int":
        plant(Raw(draw(HUGE_INT)))
    elif poison == "too_large":
        task["blob"] = "x" * MAX_EVENT_BYTES
    else:
        return draw(NOT_OBJECTS), Expect(False)
    return payload, Expect(False)


SHAPES = ["data-object", "data-json-string", "raw-payload-cloudevent", "raw-payload-bare",
          "data-base64", "bare-json"]
BROKER_SHAPES = [s for s in SHAPES if s != "raw-payload-cloudevent"]


def envelope(data: dict[str, Any], event_id: object, source: object) -> dict[str, Any]:
    """A CloudEvent as daprd marshals it (keys sorted when rendered)."""
    document = {"datacontenttype": "application/json", "pubsubname": "taskpubsub",
                "specversion": "1.0", "time": "2026-11-27T08:00:00Z", "topic": "task-updates",
                "traceid": NO_TRACE, "traceparent": NO_TRACE, "tracestate": "",
                "type": "com.dapr.event.sent", **data}
    if event_id is not None:
        document["id"] = event_id
    if source is not None:
        document["source"] = source
    return dict(sorted(document.items()))


def b64(text: str) -> str:
    return base64.b64encode(to_bytes(text)).decode()


@st.composite
def events(draw: st.DrawFn, users: list[tuple[str, object]], ascii_only: bool,
           shapes: list[str] = SHAPES) -> tuple[object, Expect]:
    """One delivered event (a decoded-JSON-shaped value, Raw inside) of any shape,
    valid or poisoned in its payload or its envelope."""
    payload, expect = draw(payloads(users))
    shape = draw(st.sampled_from(shapes))
    event_id: object = draw(st.sampled_from(["uuid", "uuid", "number", "none", "empty"]))
    event_id = {"uuid": str(uuid.uuid4()), "number": next(_SEQ) * 1000003, "none": None,
                "empty": ""}[str(event_id)]
    source: object = draw(st.none() | st.text(max_size=10) | st.integers(0, 10**6))
    fault = draw(st.sampled_from([None] * 6 + ["id_surrogate", "source_surrogate",
                                               "id_not_string", "garbage_data"]))
    if shape == "bare-json":
        fault = None  # no envelope to spoil
    if fault is not None:
        expect = Expect(False)
    if fault == "id_surrogate":
        event_id = draw(WITH_LONE)
    elif fault == "source_surrogate":
        event_id, source = str(uuid.uuid4()), draw(WITH_LONE)
    elif fault == "id_not_string":
        event_id = draw(NOT_A_STRING)
    inner = render(payload, ascii_only)
    if shape == "bare-json":
        return payload, expect
    if shape == "data-object":
        data: dict[str, Any] = {"data": payload}
    elif shape == "data-json-string":
        data = {"data": inner, "datacontenttype": "text/plain"}
    elif shape == "data-base64":
        data = {"data_base64": b64(inner), "datacontenttype": "application/octet-stream"}
    elif shape == "raw-payload-bare":
        data = {"data_base64": b64(inner), "datacontenttype": "application/octet-stream"}
    else:
        # The publisher's CloudEvent inside daprd's raw-payload wrapper, whose
        # own id is new on every delivery: the inner id (and its faults) count.
        wrapped = render(envelope({"data": payload}, event_id, source), ascii_only)
        data = {"data_base64": b64(wrapped), "datacontenttype": "application/octet-stream"}
        event_id, source = str(uuid.uuid4()), "Dapr"
    if fault == "garbage_data":
        data = draw(st.sampled_from([
            {"data": draw(st.text(max_size=20))},
            {"data_base64": draw(st.text(max_size=20))},
            {"data_base64": draw(st.integers() | st.lists(st.text(), max_size=1))},
            {"data_base64": base64.b64encode(draw(st.binary(max_size=20))).decode()},
        ]))
    return envelope(data, event_id, source), expect


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    kind: str  # "single", "bulk" or "junk"
    expect: list[Expect] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


def new_users() -> list[tuple[str, object]]:
    """Two fresh users per delivery: one by name, one by number (stored as text)."""
    number = 10**12 + next(_SEQ)
    return [(f"fuzz-{uuid.uuid4().hex[:12]}", None), (str(number), number)]


def named(users: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [(key, key if value is None else value) for key, value in users]


@st.composite
def singles(draw: st.DrawFn) -> Delivery:
    users = named(new_users())
    ascii_only = draw(st.booleans())
    event, expect = draw(events(users, ascii_only))
    body = to_bytes(render(event, ascii_only))
    return Delivery(body, DAPR_HEADERS, "single", [expect], users=[u for u, _ in users])


@st.composite
def bulks(draw: st.DrawFn) -> Delivery:
    users = named(new_users())
    ascii_only = draw(st.booleans())
    entries: list[object] = []
    expects: list[Expect] = []
    entry_ids: list[str] = []
    for index in range(draw(st.integers(1, 6))):
        # rawPayload bulk entries carry the broker bytes (a publisher's CloudEvent
        # or bare JSON) as base64, never one of daprd's own wrappers.
        raw_payload = draw(st.integers(0, 4)) == 0
        event, expect = draw(events(users, ascii_only, BROKER_SHAPES if raw_payload else SHAPES))
        entry_id = draw(st.sampled_from([str(index), str(uuid.uuid4())]))
        metadata: object = draw(st.sampled_from(["kafka", "none", "empty", "junk", "surrogate"]))
        offset = str(next(_SEQ))
        metadata = {"kafka": {"__key": "k", "__offset": offset, "__partition": "0",
                              "__topic": "task-updates"},
                    "none": None, "empty": {}, "junk": ["x"],
                    "surrogate": {"__offset": offset, "__partition": "0",
                                  "__topic": "t\udc80"}}[str(metadata)]
        if raw_payload:
            event = b64(render(event, ascii_only))
        entry = {"contentType": "application/cloudevents+json", "entryId": entry_id,
                 "event": event, "metadata": metadata}
        broken = draw(st.sampled_from([None] * 8 + ["no_id", "empty_id", "number_id",
                                                    "surrogate_id", "not_object"]))
        if broken is None:
            entries.append(entry)
            expects.append(expect)
            entry_ids.append(entry_id)
        elif broken == "not_object":
            entries.append(draw(NOT_OBJECTS))
        else:
            # Entries daprd never sends: nothing to answer them by.
            entry["entryId"] = {"no_id": None, "empty_id": "", "number_id": index,
                                "surrogate_id": f"e\ud800{index}"}[broken]
            entries.append(entry)
    document = {"entries": entries, "id": str(uuid.uuid4()),
                "metadata": {"pubsubName": "taskpubsub"}, "pubsubname": "taskpubsub",
                "topic": "task-updates", "type": "com.dapr.event.sent.bulk"}
    body = to_bytes(render(document, ascii_only))
    return Delivery(body, BULK_HEADERS, "bulk", expects, entry_ids, [u for u, _ in users])


@st.composite
def junk(draw: st.DrawFn) -> Delivery:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        body = draw(st.binary(max_size=64))
    elif choice == 1:
        body = to_bytes(render(draw(VALUES | st.builds(Raw, DEEP | HUGE_INT))))
    elif choice == 2:
        # A bulk cut short: no entry can be read reliably.
        whole = draw(bulks()).body
        body = whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    else:
        body = to_bytes(render({"entries": draw(VALUES)}))
    headers = draw(st.sampled_from([DAPR_HEADERS, BULK_HEADERS]))
    return Delivery(body, headers, "junk")


DELIVERIES = st.one_of(singles(), bulks(), junk())


# -- checking a reply as daprd reads it -------------------------------------------------


def as_response(reply: Any) -> httpx.Response:
    """An ``Ingest.handle`` reply as the HTTP response daprd reads."""
    # What JSONResponse does: strict JSON, UTF-8; it must never fail.
    content = json.dumps(reply.content, ensure_ascii=False, allow_nan=False,
                         separators=(",", ":")).encode()
    return httpx.Response(reply.status_code, content=content,
                          headers={"content-type": "application/json"})


def check_reply(delivery: Delivery, response: httpx.Response, backend_up: bool = True) -> None:
    assert response.status_code < 500, response.text
    if delivery.kind == "junk":
        body = response.json()
        statuses = ([s["status"] for s in body["statuses"]] if "statuses" in body
                    else [body["status"]])
        assert set(statuses) <= {"SUCCESS", "DROP"}, body
        return
    valid = ACK if backend_up else RETRY
    wanted = [valid if e.valid else DROP for e in delivery.expect]
    if delivery.kind == "single":
        assert daprd_outcome(response) == wanted[0], (response.content, delivery.body[:500])
        return
    statuses = response.json()["statuses"]
    # One status per entry daprd could have sent, in order.
    assert [s["entryId"] for s in statuses] == delivery.entry_ids
    outcomes = daprd_bulk_outcomes(response, delivery.entry_ids)
    assert [outcomes[i] for i in delivery.entry_ids] == wanted, (statuses, wanted)
    assert [s["status"] for s in statuses] == [
        {ACK: "SUCCESS", DROP: "DROP", RETRY: "RETRY"}[w] for w in wanted]


async def history(broker: Broker, user: str) -> list[Record]:
    head = (await broker.replay(user, Position("unknown", 0))).head
    replay = await broker.replay(user, Position(head.epoch, 0))
    assert replay.resync is None
    return replay.records


def strict(data: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} reached a browser")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


async def check_stored(broker: Broker, delivery: Delivery) -> None:
    for user in delivery.users:
        wanted = [e.data for e in delivery.expect if e.valid and e.user == user]
        records = await history(broker, user)
        assert [strict(r.data) for r in records] == wanted, user


class Harness:
    """An Ingest over a real broker, driven from hypothesis on one event loop."""

    def __init__(self, broker: Broker) -> None:
        self.loop = asyncio.new_event_loop()
        self.broker = broker
        self.ingest = Ingest(broker, Settings(jwt_secret="s", max_event_bytes=MAX_EVENT_BYTES))
        self.count = 0
        self.run(broker.start(_NoSink()))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def check(self, delivery: Delivery, backend_up: bool = True) -> None:
        reply = self.run(self.ingest.handle(delivery.body, delivery.headers))
        check_reply(delivery, as_response(reply), backend_up)
        if backend_up and delivery.kind != "junk":
            self.run(check_stored(self.broker, delivery))
        self.count += max(1, len(delivery.expect))

    def close(self) -> None:
        self.run(self.broker.close())
        self.loop.close()


class _NoSink:
    def deliver(self, record: Record) -> None:
        pass

    def resumed(self) -> None:
        pass


@pytest.fixture
def memory() -> Iterator[Harness]:
    harness = Harness(MemoryBroker(history_size=100, history_ttl_seconds=3600))
    yield harness
    harness.close()


@pytest.fixture
def redis_backed(redis_server) -> Iterator[Harness]:
    from sse_service.broker_redis import RedisBroker

    server: RedisServer = redis_server()
    harness = Harness(RedisBroker(Settings(jwt_secret="s", backend="redis",
                                           redis_url=server.url)))
    yield harness
    harness.close()


# -- in process: thousands of deliveries per backend -----------------------------------


def test_no_delivery_gets_a_server_error_or_an_endless_retry_memory(memory):
    @fuzz(900)
    @given(DELIVERIES)
    def check(delivery: Delivery) -> None:
        memory.check(delivery)

    check()
    assert memory.count >= 1400


def test_no_delivery_gets_a_server_error_or_an_endless_retry_redis(redis_backed):
    @fuzz(600)
    @given(DELIVERIES)
    def check(delivery: Delivery) -> None:
        redis_backed.check(delivery)

    check()
    assert redis_backed.count >= 900


class _DownBroker(MemoryBroker):
    async def append(self, user_id: str, key: str, data: bytes) -> Appended:
        raise BackendUnavailable("backend is down")

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        return [BackendUnavailable("backend is down")] * len(items)


def test_retry_only_while_the_backend_is_down_and_drops_still_drop():
    harness = Harness(_DownBroker(history_size=10, history_ttl_seconds=60))
    try:
        @fuzz(150)
        @given(st.one_of(singles(), bulks()))
        def check(delivery: Delivery) -> None:
            harness.check(delivery, backend_up=False)

        check()
    finally:
        harness.close()


# -- over HTTP: real services ------------------------------------------------------------


def http_check(client: httpx.Client, delivery: Delivery, backend_up: bool = True) -> None:
    response = client.post("/task-updates", content=delivery.body, headers=delivery.headers)
    assert response.headers["content-type"].startswith("application/json"), response
    check_reply(delivery, response, backend_up)


def test_no_delivery_over_http_gets_a_server_error_memory(start_service):
    svc = start_service(max_event_bytes=MAX_EVENT_BYTES)
    with httpx.Client(base_url=svc.url, timeout=10) as client:
        @fuzz(130)
        @given(DELIVERIES)
        def check(delivery: Delivery) -> None:
            http_check(client, delivery)

        check()
    assert "Traceback" not in svc.logs()


def test_no_delivery_over_http_gets_a_server_error_redis(start_service, redis_server):
    server = redis_server()
    svc = start_service(max_event_bytes=MAX_EVENT_BYTES, backend="redis", redis_url=server.url)
    with httpx.Client(base_url=svc.url, timeout=10) as client:
        @fuzz(130)
        @given(DELIVERIES)
        def check(delivery: Delivery) -> None:
            http_check(client, delivery)

        check()
        server.kill()

        @fuzz(30)
        @given(st.one_of(singles(), bulks()))
        def check_down(delivery: Delivery) -> None:
            http_check(client, delivery, backend_up=False)

        check_down()
    assert "Traceback" not in svc.logs()
