"""Prometheus metrics, scraped from the running service's metrics port.

Each test does something a client or daprd would do, scrapes ``/metrics`` over
HTTP, parses it with prometheus_client's own parser and checks the numbers
against what it did.  Stream tests run on both stream paths; their counts must
be the same.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sse_service.config import Settings
from support import DAPR_HEADERS, aeventually, cloudevent, eventually, free_port, task_event

BULK_HEADERS = {**DAPR_HEADERS, "content-type": "application/json"}


@dataclass
class Scrape:
    text: str
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float | None:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
        return found[0] if found else None

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(port: int) -> Scrape:
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert reply.status_code == 200, reply.text
    families = text_string_to_metric_families(reply.text)
    return Scrape(reply.text, [sample for family in families for sample in family.samples])


@pytest.fixture
def metered(start_service: Any) -> Any:
    """``metered(**settings)`` → (service, metrics port): a service with its metrics on."""

    def start(**settings: Any) -> tuple[Any, int]:
        port = free_port()
        return start_service(metrics_port=port, **settings), port

    return start


def bulk(*entries: tuple[str, object]) -> bytes:
    return json.dumps({
        "entries": [{"entryId": entry_id, "event": event, "metadata": {},
                     "contentType": "application/cloudevents+json"}
                    for entry_id, event in entries],
        "id": str(uuid.uuid4()), "metadata": {"pubsubName": "taskpubsub"},
        "pubsubname": "taskpubsub", "topic": "task-updates", "type": "com.dapr.event.sent.bulk",
    }).encode()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (Linux: /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


# -- streams: both paths ----------------------------------------------------------


@pytest.mark.usefixtures("stream_path")
async def test_open_streams_users_refusals_and_closes(metered, open_stream):
    service, port = metered()
    alice = [await open_stream(service, token=service.token("alice")) for _ in range(2)]
    bob = await open_stream(service, token=service.token("bob"))
    now = scrape(port)
    assert now.value("sse_service_open_streams") == 3
    assert now.value("sse_service_users_with_streams") == 2
    assert now.value("sse_service_streams_opened_total") == 3

    await open_stream(service, token="not-a-token", expect=401)
    now = scrape(port)
    assert now.value("sse_service_streams_refused_total", reason="unauthorized") == 1
    assert now.value("sse_service_streams_refused_total", reason="user_limit") == 0

    await bob.close()
    closed = await aeventually(
        lambda: scrape(port).value("sse_service_streams_closed_total",
                                   reason="client_disconnected") == 1,
        message=lambda: scrape(port).text)
    assert closed
    now = scrape(port)
    assert now.value("sse_service_open_streams") == 2
    assert now.value("sse_service_users_with_streams") == 1
    assert len(alice) == 2


@pytest.mark.usefixtures("stream_path")
async def test_limits_are_refused_by_reason(metered, open_stream):
    service, port = metered(max_connections_per_user=1, max_connections=2)
    await open_stream(service, token=service.token("carol"))
    await open_stream(service, token=service.token("carol"), expect=429)
    await open_stream(service, token=service.token("dave"))
    await open_stream(service, token=service.token("erin"), expect=503)
    now = scrape(port)
    assert now.value("sse_service_streams_refused_total", reason="user_limit") == 1
    assert now.value("sse_service_streams_refused_total", reason="capacity") == 1
    assert now.value("sse_service_streams_opened_total") == 2


@pytest.mark.usefixtures("stream_path")
async def test_fan_out_counts_frames_and_bytes_per_stream(metered, open_stream):
    service, port = metered()
    streams = [await open_stream(service, token=service.token("fran")) for _ in range(2)]
    await open_stream(service, token=service.token("other"))
    service.publish("fran", 1)
    event = (await streams[0].take(1))[0]
    assert (await streams[1].take(1))[0].id == event.id
    frame = f"id: {event.id}\ndata: {event.data}\n\n".encode()
    now = scrape(port)
    assert now.value("sse_service_queued_frames_total") == 2
    assert now.value("sse_service_queued_bytes_total") == 2 * len(frame)


@pytest.mark.usefixtures("stream_path")
async def test_resumes_by_outcome(metered, open_stream):
    service, port = metered()
    token = service.token("gina")
    first = await open_stream(service, token=token)
    service.publish("gina", 1)
    service.publish("gina", 2)
    one, _ = await first.take(2)

    resumed = await open_stream(service, token=token, last_event_id=one.id)
    assert await resumed.tasks(1) == [2]
    stale = await open_stream(service, token=token, last_event_id="zzzzzzzzzz-1")
    assert (await stale.next()).event == "resync"
    garbled = await open_stream(service, token=token, last_event_id="not an id")
    assert (await garbled.next()).event == "resync"

    now = scrape(port)
    assert now.value("sse_service_resumes_total", outcome="replayed") == 1
    assert now.value("sse_service_resumes_total", outcome="unknown_epoch") == 1
    assert now.value("sse_service_resumes_total", outcome="invalid_id") == 1
    assert now.value("sse_service_resumes_total", outcome="expired") == 0
    assert now.value("sse_service_streams_opened_total") == 4


@pytest.mark.usefixtures("stream_path")
async def test_closes_by_reason(metered, open_stream):
    service, port = metered(jwt_leeway_seconds=0)
    expiring = await open_stream(service, token=service.token("hana", ttl=1))
    old_token = service.token("ivan")
    revoked = await open_stream(service, token=old_token)
    reply = service.deliver(cloudevent({"event_type": "session.revoked", "user_id": "ivan",
                                        "not_before": time.time() + 1}))
    assert reply.json()["status"] == "SUCCESS"
    await revoked.wait_ended()
    await expiring.wait_ended()
    # Refused once it held a slot (the replay names the sign-out): a refusal, not a close.
    await open_stream(service, token=old_token, expect=401)

    got = scrape(port)
    closed = {reason: got.value("sse_service_streams_closed_total", reason=reason)
              for reason in ("revoked", "token_expired", "slow_consumer", "closed",
                             "client_disconnected", "server_shutdown")}
    assert closed == {"revoked": 1, "token_expired": 1, "slow_consumer": 0, "closed": 0,
                      "client_disconnected": 0, "server_shutdown": 0}
    assert got.value("sse_service_streams_refused_total", reason="unauthorized") == 1
    assert got.value("sse_service_streams_opened_total") == 2
    assert got.value("sse_service_open_streams") == 0


# -- deliveries -----------------------------------------------------------------


@pytest.mark.usefixtures("stream_path")
def test_ingest_entries_duplicates_latency_and_lag(metered):
    service, port = metered()
    recent = datetime.fromtimestamp(time.time() - 2, UTC)
    ahead = datetime.fromtimestamp(time.time() + 3600, UTC)
    single = cloudevent(task_event("jack", 1), "ce-1")  # its time is days old
    assert service.deliver(single).json()["status"] == "SUCCESS"

    def entry(task_id: int, event_id: str, **fields: Any) -> object:
        return json.loads(cloudevent(task_event("jack", task_id), event_id, **fields))

    reply = service.deliver(bulk(
        ("a", entry(2, "ce-2", time=recent.isoformat())),
        ("b", json.loads(single)),                                  # a duplicate
        ("c", json.loads(cloudevent("a string, not a task event"))),  # malformed
        ("d", entry(3, "ce-3", time="not a time")),                 # no lag
        ("e", entry(4, "ce-4", time=ahead.isoformat())),            # lag clamped to 0
    ), BULK_HEADERS)
    statuses = {s["entryId"]: s["status"] for s in reply.json()["statuses"]}
    assert statuses == {"a": "SUCCESS", "b": "SUCCESS", "c": "DROP", "d": "SUCCESS",
                        "e": "SUCCESS"}
    assert service.deliver(b"not json").json()["status"] == "DROP"

    got = scrape(port)
    assert got.value("sse_service_ingest_entries_total", status="SUCCESS") == 5
    assert got.value("sse_service_ingest_entries_total", status="DROP") == 2
    assert got.value("sse_service_ingest_entries_total", status="RETRY") == 0
    assert got.value("sse_service_ingest_duplicates_total") == 1
    # One observation per delivery request.
    assert got.value("sse_service_ingest_duration_seconds_count") == 3
    assert got.value("sse_service_ingest_duration_seconds_bucket", le="+Inf") == 3
    # ce-1 (days ago), ce-2 (2 s ago), ce-4 (ahead: 0); the duplicate and ce-3 are not seen.
    assert got.value("sse_service_publish_lag_seconds_count") == 3
    assert got.value("sse_service_publish_lag_seconds_bucket", le="0.005") == 1
    assert got.value("sse_service_publish_lag_seconds_bucket", le="1.0") == 1
    assert got.value("sse_service_publish_lag_seconds_bucket", le="10.0") == 2
    assert got.value("sse_service_publish_lag_seconds_bucket", le="1800.0") == 2
    # The sum says the event from ahead counted as 0, not as -3600.
    days_old = time.time() - datetime.fromisoformat(json.loads(single)["time"]).timestamp()
    lag_sum = got.value("sse_service_publish_lag_seconds_sum")
    assert lag_sum is not None and abs(lag_sum - (days_old + 2)) < 30, (lag_sum, days_old)


# -- the endpoint -----------------------------------------------------------------


def test_build_info_process_metrics_and_conventions(metered):
    service, port = metered()
    got = scrape(port)
    assert got.value("sse_service_build_info", version=version("sse-service")) == 1
    assert got.value("process_open_fds") is not None and got.value("process_open_fds") > 0
    assert got.value("process_max_fds") is not None
    # The memory backend has no pub/sub connection.
    assert got.value("sse_service_redis_pubsub_connected") is None
    families = list(text_string_to_metric_families(got.text))
    ours = [f for f in families if f.name.startswith("sse_service_")]
    assert {f.name.removeprefix("sse_service_") for f in ours} == {
        "open_streams", "users_with_streams", "streams_opened", "streams_refused",
        "streams_closed", "resumes", "gap_repairs", "queued_frames", "queued_bytes",
        "ingest_entries", "ingest_duplicates", "ingest_duration_seconds", "publish_lag_seconds",
        "backend_errors", "build_info"}
    for family in ours:
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name == family.name + "_total" for s in family.samples), family.name
    # Never through the app port.
    assert httpx.get(f"{service.url}/metrics", timeout=5).status_code == 404


def test_port_zero_turns_the_metrics_off(start_service, metered):
    off = start_service(metrics_port=0)
    assert listening_ports(off.process.pid) == {off.port}
    on, port = metered()
    assert listening_ports(on.process.pid) == {on.port, port}


def test_a_taken_metrics_port_leaves_the_service_serving(start_service):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = start_service(metrics_port=port)
        service.wait_for_log(f"metrics not served: cannot listen on 127.0.0.1 port {port}")
        assert service.publish("kim", 1) == "SUCCESS"
        assert listening_ports(service.process.pid) == {service.port}


@pytest.mark.usefixtures("stream_path")
async def test_no_label_value_carries_a_user_id(metered, open_stream):
    service, port = metered(max_connections_per_user=1)
    user = "user-3f9a1c-" + uuid.uuid4().hex
    token = service.token(user)
    stream = await open_stream(service, token=token)
    await open_stream(service, token=token, expect=429)
    await open_stream(service, token=service.token(user, ttl=-60), expect=401)
    service.publish(user, 1)
    await stream.take(1)
    service.deliver(cloudevent({"event_type": "nope", "user_id": user}))
    await stream.close()
    eventually(lambda: scrape(port).value("sse_service_open_streams") == 0,
               message=lambda: scrape(port).text)
    got = scrape(port)
    assert user not in got.text
    values = {v for s in got.samples for v in s.labels.values()}
    assert not any(user in v or "3f9a1c" in v for v in values)


def test_two_apps_in_one_process_keep_their_own_registries():
    with warnings.catch_warnings():  # starlette's note about its httpx-based client
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from sse_service.app import create_app

    ports = [free_port(), free_port()]
    apps = [create_app(Settings(jwt_secret="s" * 40, metrics_port=p, host="127.0.0.1"))
            for p in ports]
    with TestClient(apps[0]) as first, TestClient(apps[1]):
        assert first.get("/events").status_code == 401
        assert first.get("/events").status_code == 401
        refused = [scrape(p).value("sse_service_streams_refused_total", reason="unauthorized")
                   for p in ports]
        assert refused == [2, 0]
    for p in ports:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=2)


# -- Redis ------------------------------------------------------------------------------


async def test_redis_pubsub_connected_and_backend_errors(metered, open_stream, redis_server):
    server = redis_server()
    service, port = metered(backend="redis", redis_url=server.url,
                            redis_timeout_seconds=0.3)

    def value(name: str, **labels: str) -> float | None:
        return scrape(port).value(name, **labels)

    eventually(lambda: value("sse_service_redis_pubsub_connected") == 1,
               message=lambda: scrape(port).text)
    stream = await open_stream(service, token=service.token("lena"))
    assert value("sse_service_gap_repairs_total") == 0
    # A dropped pub/sub connection: reconnected, and the open stream's history read again.
    server.command("CLIENT", "KILL", "TYPE", "pubsub")
    await aeventually(lambda: (value("sse_service_backend_errors_total", operation="pubsub") or 0)
                      >= 1 and (value("sse_service_gap_repairs_total") or 0) >= 1,
                      message=lambda: scrape(port).text)
    await aeventually(lambda: value("sse_service_redis_pubsub_connected") == 1,
                      message=lambda: scrape(port).text)

    server.kill()
    await aeventually(lambda: value("sse_service_redis_pubsub_connected") == 0,
                      message=lambda: scrape(port).text)
    reply = service.deliver(cloudevent(task_event("lena", 1)))
    assert reply.json()["status"] == "RETRY"
    got = scrape(port)
    assert got.value("sse_service_ingest_entries_total", status="RETRY") == 1
    assert (got.value("sse_service_backend_errors_total", operation="append") or 0) >= 1
    await stream.close()
