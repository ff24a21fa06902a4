"""Several service processes on one real redis-server, as behind an ingress.

Dapr hands each event to one replica; every client, on any replica, must get
it exactly once and in order, also across replica deaths, Redis outages and
a Redis that comes back empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from support import DAPR_HEADERS, Service, Stream, aeventually, cloudevent, task_event
from support.redis import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def replica(start_service: Callable[..., Service]) -> Callable[..., Service]:
    def start(server: RedisServer, url: str | None = None, **settings: Any) -> Service:
        return start_service(backend="redis", redis_url=url or server.url, **settings)
    return start


async def deliver(http: httpx.AsyncClient, service: Service, body: bytes) -> str:
    reply = await http.post(f"{service.url}/task-updates", content=body, headers=DAPR_HEADERS)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["status"])


async def publish(http: httpx.AsyncClient, service: Service, user: str, *task_ids: int) -> None:
    for task_id in task_ids:
        body = cloudevent(task_event(user, task_id), f"ce-{user}-{task_id}")
        assert await deliver(http, service, body) == "SUCCESS"


async def readyz(http: httpx.AsyncClient, service: Service) -> int:
    return (await http.get(f"{service.url}/readyz")).status_code


async def ready_state(http: httpx.AsyncClient, status: int, *services: Service) -> None:
    async def check() -> bool:
        return all([await readyz(http, s) == status for s in services])
    await aeventually(check, 15, message=f"/readyz {status}", interval=0.05)


async def keepalives_continue(*streams: Stream, count: int = 3) -> None:
    marks = [len(s.comments) for s in streams]

    async def check() -> bool:
        return all(len(s.comments) >= mark + count for s, mark in zip(streams, marks, strict=True))
    await aeventually(check, 10, message="keepalives", interval=0.05)
    assert not any(s.ended.is_set() for s in streams)


async def test_event_delivered_to_one_replica_reaches_every_replica(
        redis_server, replica, open_stream, http) -> None:
    server = redis_server()
    a, b = replica(server), replica(server)
    on_b = await open_stream(b, token=b.token("7"))
    on_a = await open_stream(a, token=a.token("7"))
    other_user = await open_stream(b, token=b.token("8"))
    await publish(http, a, "7", 1, 2, 3)
    await publish(http, a, "8", 100)
    from_b = await on_b.take(3)
    from_a = await on_a.take(3)
    assert [json.loads(e.data)["task"]["id"] for e in from_b] == [1, 2, 3]
    assert [e.id for e in from_a] == [e.id for e in from_b], "ids differ between replicas"
    assert await other_user.tasks(1) == [100]
    # Dapr may redeliver to another replica: it is stored and sent once.
    redelivered = cloudevent(task_event("7", 4), "ce-7-4")
    assert await deliver(http, a, redelivered) == "SUCCESS"
    assert await deliver(http, b, redelivered) == "SUCCESS"
    await publish(http, b, "7", 5)
    assert await on_b.tasks(2) == [4, 5]
    assert await on_a.tasks(2) == [4, 5]


async def test_client_resumes_on_another_replica_after_sigkill(
        redis_server, replica, open_stream, http) -> None:
    server = redis_server()
    a, b = replica(server), replica(server)
    stream = await open_stream(b, token=b.token("9"))
    await publish(http, a, "9", *range(1, 11))
    received = await stream.tasks(10)
    b.stop(signal.SIGKILL)
    await stream.wait_ended()
    await publish(http, a, "9", *range(11, 21))  # while the client has no stream
    publisher = asyncio.ensure_future(publish(http, a, "9", *range(21, 41)))
    resumed = await open_stream(a, token=a.token("9"), last_event_id=stream.last_event_id)
    received += await resumed.tasks(30)
    await asyncio.wait_for(publisher, 20)
    await publish(http, a, "9", 41)
    received += await resumed.tasks(1)
    assert received == list(range(1, 42))


async def test_hung_redis_gets_retry_and_redeliveries_arrive_once(
        redis_server, replica, open_stream, http) -> None:
    server = redis_server()
    a, b = replica(server, keepalive_seconds=0.2), replica(server, keepalive_seconds=0.2)
    streams = [await open_stream(s, token=s.token("5")) for s in (a, b)]
    await publish(http, a, "5", 1)
    for stream in streams:
        assert await stream.tasks(1) == [1]
    second = cloudevent(task_event("5", 2), "ce-5-2")
    third = cloudevent(task_event("5", 3), "ce-5-3")
    server.pause()
    started = time.monotonic()
    assert await deliver(http, a, second) == "RETRY"
    assert await deliver(http, b, third) == "RETRY"
    assert time.monotonic() - started < 5, "a hung Redis held the Dapr request too long"
    assert await readyz(http, a) == 503 and await readyz(http, b) == 503
    await keepalives_continue(*streams)
    server.resume()
    await ready_state(http, 200, a, b)
    # Dapr redelivers, maybe more than once, maybe elsewhere.
    for service, body in ((a, second), (b, third), (b, second), (a, third)):
        assert await deliver(http, service, body) == "SUCCESS"
    await publish(http, b, "5", 4)
    for stream in streams:
        assert await stream.tasks(3) == [2, 3, 4]


async def test_redis_restarted_empty_sends_resync_then_live_events(
        redis_server, replica, open_stream, http) -> None:
    server = redis_server()
    a, b = replica(server, keepalive_seconds=0.2), replica(server, keepalive_seconds=0.2)
    streams = [await open_stream(s, token=s.token("6")) for s in (a, b)]
    await publish(http, a, "6", 1)
    for stream in streams:
        assert await stream.tasks(1) == [1]
    second = cloudevent(task_event("6", 2), "ce-6-2")
    server.kill()
    started = time.monotonic()
    assert await deliver(http, a, second) == "RETRY"
    assert time.monotonic() - started < 3
    assert await readyz(http, a) == 503 and await readyz(http, b) == 503
    await keepalives_continue(*streams)
    old_epoch = streams[0].last_event_id.split("-")[0]
    server.start()
    for stream in streams:
        event = await stream.next(timeout=15)
        assert event.event == "resync", event
        assert json.loads(event.data)["reason"] == "unknown_epoch"
        assert not event.id.startswith(old_epoch)
    await ready_state(http, 200, a, b)
    assert await deliver(http, a, second) == "SUCCESS"
    await publish(http, b, "6", 3)
    for stream in streams:
        events = await stream.take(2)
        assert [json.loads(e.data)["task"]["id"] for e in events] == [2, 3]
        assert all(e.event == "message" and not e.id.startswith(old_epoch) for e in events)


async def test_events_appended_while_one_replica_was_cut_off_reach_it(
        redis_server, replica, open_stream, http) -> None:
    server = redis_server()
    server.command("ACL", "SETUSER", "replica-b", "on", ">secret-b-pw", "~*", "&*", "+@all")
    a = replica(server)
    b = replica(server, url=server.url_for("replica-b", "secret-b-pw"))
    on_a = await open_stream(a, token=a.token("11"))
    on_b = await open_stream(b, token=b.token("11"))
    await publish(http, a, "11", 1)
    assert await on_b.tasks(1) == [1] and await on_a.tasks(1) == [1]
    # Only replica B loses Redis: its connections are cut and cannot come back.
    server.command("ACL", "SETUSER", "replica-b", "off")
    server.command("CLIENT", "KILL", "USER", "replica-b")
    await ready_state(http, 503, b)
    await publish(http, a, "11", 2, 3, 4, 5, 6)
    assert await on_a.tasks(5) == [2, 3, 4, 5, 6]
    assert on_b.events.empty()
    server.command("ACL", "SETUSER", "replica-b", "on")
    assert await on_b.tasks(5, timeout=15) == [2, 3, 4, 5, 6]
    await ready_state(http, 200, b)
    await publish(http, b, "11", 7)
    assert await on_b.tasks(1) == [7] and await on_a.tasks(1) == [7]
    assert "secret-b-pw" not in b.logs()
    assert "pub/sub connection to redis://replica-b:***@" in b.logs()


def run_check(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env.update({"SSE_BACKEND": "redis", "SSE_REDIS_URL": url})
    return subprocess.run([sys.executable, "-m", "sse_service", "check"], env=env,
                          capture_output=True, text=True, timeout=30)


def test_check_command_exit_status_follows_redis(redis_server) -> None:
    server = redis_server()
    server.command("ACL", "SETUSER", "checker", "on", ">check-pw", "~*", "&*", "+@all")
    url = server.url_for("checker", "check-pw")
    up = run_check(url)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "redis: ok" in up.stdout and "check-pw" not in up.stdout + up.stderr
    server.pause()
    hung = run_check(url)
    assert hung.returncode == 1, hung.stdout + hung.stderr
    assert "unavailable" in hung.stdout and "check-pw" not in hung.stdout + hung.stderr
    server.resume()
    assert run_check(url).returncode == 0
    server.kill()
    assert run_check(url).returncode == 1
