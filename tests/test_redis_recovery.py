"""Redis restarted, restored from an older backup, failed over, or full.

The promise under test: every acknowledged event reaches each client exactly
once, or the client gets ``event: resync`` at the gap; an id never names two
different events.  Real service processes, real ``redis-server`` processes,
deliveries and replies as daprd sends and reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sse_service.broker import Position, Record, Replay
from sse_service.broker_redis import RedisBroker
from sse_service.config import Settings
from sse_service.connection import Connection
from sse_service.errors import BackendUnavailable, ResyncReason
from sse_service.redis_connect import unsupported
from sse_service.redis_keys import user_keys
from sse_service.sse import Decoder, ServerSentEvent
from support import DAPR_HEADERS, Service, Stream, aeventually, cloudevent, task_event
from support.redis import RedisServer
from test_ingest import BULK_HEADERS, bulk_body, bulk_entry, daprd_bulk_outcomes

pytestmark = pytest.mark.timeout(90)


# -- what a client may see ---------------------------------------------------------
def task_of(event: ServerSentEvent) -> int:
    return int(json.loads(event.data)["task"]["id"])


def check_stream(events: list[ServerSentEvent], expected: list[int], ids: dict[str, str],
                 final: Position) -> None:
    """The promise for one stream entitled to ``expected`` (acknowledged task ids,
    in order, ``final`` the position of the last): each arrives exactly once, or
    a resync frame stands where some are missing.  Each frame continues the one
    before it, a resync is the only way into another epoch and announces each
    epoch once.  ``ids`` collects every id seen by any client, with its data."""
    segments: list[list[int]] = [[]]
    announced: set[str] = set()
    previous: Position | None = None
    for event in events:
        position = Position.parse(event.id)
        assert position is not None, event
        if event.event == "resync":
            assert position.epoch not in announced, f"second resync into {position.epoch}"
            assert previous is None or previous.epoch != position.epoch or (
                position.offset >= previous.offset), f"resync {position} after {previous}"
            announced.add(position.epoch)
            segments.append([])
        else:
            assert previous is None or position == Position(
                previous.epoch, previous.offset + 1), f"{position} right after {previous}"
            assert ids.setdefault(event.id, event.data) == event.data, (
                f"id {event.id} names two events: {ids[event.id]} and {event.data}")
            segments[-1].append(task_of(event))
        previous = position
    reached = 0
    for index, segment in enumerate(segments):
        if not segment:
            continue
        assert segment[0] in expected, f"task {segment[0]} was never acknowledged"
        start = expected.index(segment[0])
        assert index > 0 or start == 0, f"tasks {expected[:start]} missing, no resync"
        assert start >= reached, f"task {segment[0]} arrived twice"
        assert segment == expected[start:start + len(segment)], (
            f"gap or repeat without a resync: got {segment}, "
            f"acknowledged {expected[start:start + len(segment)]}")
        reached = start + len(segment)
    covered = not segments[-1] and previous is not None and (
        previous.epoch == final.epoch and previous.offset >= final.offset)
    assert reached == len(expected) or covered, f"never received {expected[reached:]}"


@dataclass
class Client:
    """One stream and everything it delivered, drained in the background."""

    stream: Stream
    entitled_after: int  # the task its position points at (0: entitled to all)
    events: list[ServerSentEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _drain(self) -> None:
        while (event := await self.stream.events.get()) is not None:
            self.events.append(event)

    def tasks(self) -> list[int]:
        return [task_of(e) for e in self.events if e.event != "resync"]


class Publisher:
    """daprd for one user: each task delivered until acknowledged, in order,
    round robin over the replicas; ``pause`` holds it between deliveries."""

    def __init__(self, http: httpx.AsyncClient, services: list[Service], user: str) -> None:
        self.http, self.services, self.user = http, services, user
        self.acked: list[int] = []
        self._next = 1
        self._gate = asyncio.Event()
        self._gate.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, count: int) -> None:
        for _ in range(count):
            task, self._next = self._next, self._next + 1
            await self._deliver(task)

    async def pause(self) -> None:
        self._gate.clear()
        await asyncio.wait_for(self._idle.wait(), 15)

    def resume(self) -> None:
        self._gate.set()

    async def _deliver(self, task: int) -> None:
        body = cloudevent(task_event(self.user, task), f"ce-{self.user}-{task}")
        service = self.services[task % len(self.services)]

        async def acknowledged() -> bool:
            await asyncio.wait_for(self._gate.wait(), 30)
            self._idle.clear()
            try:
                reply = await self.http.post(f"{service.url}/task-updates", content=body,
                                             headers=DAPR_HEADERS)
            finally:
                self._idle.set()
            assert reply.status_code == 200, reply.text
            status = reply.json()["status"]
            assert status in ("SUCCESS", "RETRY"), status
            return status == "SUCCESS"

        # The interval is daprd's back-off before it redelivers.
        await aeventually(acknowledged, 30, message=f"task {task} never acknowledged",
                          interval=0.05)
        self.acked.append(task)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def clients(open_stream: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """``await clients(service, user, had=None)`` → a draining :class:`Client`; ``had``:
    the events a client received before it went away, it resumes after the last."""
    opened: list[Client] = []

    async def open_(service: Service, user: str,
                    had: list[ServerSentEvent] | None = None) -> Client:
        last_id = had[-1].id if had else None
        stream = await open_stream(service, token=service.token(user), last_event_id=last_id)
        client = Client(stream, task_of(had[-1]) if had else 0)
        client.task = asyncio.ensure_future(client._drain())
        opened.append(client)
        return client

    yield open_
    for client in opened:
        if client.task is not None:
            client.task.cancel()


def newest(server: RedisServer, user: str) -> Position:
    """The position of the user's newest record, as Redis holds it."""
    epoch, head = server.command("HMGET", user_keys(user).meta, "epoch", "head")
    return Position(epoch, int(head))


async def settle(clients: list[Client], publisher: Publisher, server: RedisServer) -> Position:
    """Publish one more task and wait until every client reached it (by the task
    itself or a resync past it): all that came before has then arrived or never
    will.  Returns its position."""
    await publisher.publish(1)
    final = newest(server, publisher.user)

    def reached(client: Client) -> bool:
        return any((p := Position.parse(e.id)) is not None and p.epoch == final.epoch
                   and p.offset >= final.offset for e in client.events)

    await aeventually(lambda: all(reached(c) for c in clients), 20, message=f"position {final}")
    return final


def check_all(clients: list[Client], acked: list[int], final: Position) -> None:
    ids: dict[str, str] = {}
    for client in clients:
        after = client.entitled_after
        expected = acked[acked.index(after) + 1:] if after else list(acked)
        check_stream(client.events, expected, ids, final)


# -- a Redis restart under live and resuming streams ---------------------------------
def restart(server: RedisServer, kind: str, backup: bytes) -> None:
    if kind == "older":
        server.restart_from(backup)
    elif kind == "complete":
        server.restart_saved()
    else:
        server.restart_from(None)


@pytest.mark.parametrize("kind", ["older", "complete", "empty"])
async def test_redis_restart_keeps_the_promise_for_live_and_resuming_streams(
        kind: str, redis_server, start_service, clients, http) -> None:
    server = redis_server()
    a, b = (start_service(backend="redis", redis_url=server.url, keepalive_seconds=0.2)
            for _ in range(2))
    user = "restart-" + kind
    live = [await clients(a, user), await clients(b, user)]
    publisher = Publisher(http, [a, b], user)
    await publisher.publish(10)
    await aeventually(lambda: all(len(c.tasks()) == 10 for c in live), 20, message="tasks 1-10")
    backup = await asyncio.to_thread(server.snapshot)
    early = list(live[0].events)
    await publisher.publish(10)
    await aeventually(lambda: all(len(c.tasks()) == 20 for c in live), 20, message="tasks 11-20")
    late = list(live[1].events)

    # Deliveries, to both replicas, right up to the restart and right after it.
    background = asyncio.ensure_future(publisher.publish(60))
    await aeventually(lambda: len(publisher.acked) >= 30, 20,
                      message="deliveries before the restart")
    # None in flight as Redis goes: an append that ran but lost its reply would
    # be stored again after the restart, behind the resync (its dedupe key went
    # with the old epoch), and this test follows each event once.
    await publisher.pause()
    await asyncio.to_thread(restart, server, kind, backup)
    publisher.resume()
    await asyncio.wait_for(background, 60)

    # Clients that were away come back with the ids they last had.
    resumed = [await clients(a, user, had=early), await clients(b, user, had=late)]
    final = await settle(live + resumed, publisher, server)
    check_all(live + resumed, publisher.acked, final)
    # Even a restart that lost nothing cannot be told from one that did.
    for client in live + resumed:
        assert sum(e.event == "resync" for e in client.events) == 1, client.events


# -- failover to a replica that lags ---------------------------------------------------
class Switch:
    """A stable Redis address (as a Sentinel-managed or DNS name gives): a TCP
    forwarder that :meth:`point_at` moves to another server, cutting every
    connection it carried, as a failover does."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def point_at(self, port: int) -> None:
        with self._lock:
            self.target = port
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.point_at(self.target)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()


@pytest.fixture
def switch() -> Iterator[Callable[[int], Switch]]:
    made: list[Switch] = []

    def make(port: int) -> Switch:
        made.append(Switch(port))
        return made[-1]

    yield make
    for item in made:
        item.close()


async def test_failover_to_a_lagging_replica_keeps_the_promise(
        redis_server, start_service, clients, http, switch) -> None:
    primary = redis_server()
    primary.command("ACL", "SETUSER", "replicator", "on", ">repl-pw", "~*", "&*", "+@all")
    standby = redis_server("--replicaof", "127.0.0.1", str(primary.port),
                           "--masteruser", "replicator", "--masterauth", "repl-pw")
    standby.wait_for(lambda: standby.info("replication")["master_link_status"] == "up",
                     "replication link")
    address = switch(primary.port)
    a, b = (start_service(backend="redis", redis_url=address.url, keepalive_seconds=0.2)
            for _ in range(2))
    user = "failover"
    live = [await clients(a, user), await clients(b, user)]
    publisher = Publisher(http, [a, b], user)
    await publisher.publish(10)
    await aeventually(lambda: all(len(c.tasks()) == 10 for c in live), 20, message="tasks 1-10")
    assert primary.command("WAIT", 1, 5000) == 1, "the standby never caught up"
    early = list(live[0].events)
    # The standby loses its link: what the primary acknowledges now it never gets.
    primary.command("ACL", "SETUSER", "replicator", "off")
    primary.command("CLIENT", "KILL", "USER", "replicator")
    await publisher.publish(10)
    await aeventually(lambda: all(len(c.tasks()) == 20 for c in live), 20, message="tasks 11-20")
    late = list(live[1].events)
    stored = user_keys(user).log
    assert standby.command("XLEN", stored) == 10 and primary.command("XLEN", stored) == 20

    await publisher.pause()
    primary.kill()
    standby.command("REPLICAOF", "NO", "ONE")
    address.point_at(standby.port)
    publisher.resume()
    await publisher.publish(30)

    resumed = [await clients(a, user, had=early), await clients(b, user, had=late)]
    final = await settle(live + resumed, publisher, standby)
    check_all(live + resumed, publisher.acked, final)
    for client in live + resumed:
        assert sum(e.event == "resync" for e in client.events) == 1, client.events


# -- the broker itself across restores -------------------------------------------------
async def test_a_restored_backup_gets_a_new_epoch_and_serves_no_old_offset(
        redis_server) -> None:
    server = redis_server()
    settings = Settings(backend="redis", redis_url=server.url)
    broker = RedisBroker(settings)
    try:
        for n in range(1, 4):
            await broker.append("u", f"k{n}", b'{"n":%d}' % n)
        backup = server.snapshot()
        held = (await broker.append("u", "k4", b'{"n":4}')).record.position
        server.restart_from(backup)
        # Whoever touches the user first, a writer or a reader, renews the epoch.
        fresh = await broker.append("u", "k5", b'{"n":5}')
        assert fresh.record.epoch != held.epoch and fresh.record.offset == 1
        assert (await broker.replay("u", held)).resync == ResyncReason.UNKNOWN_EPOCH
        behind = Position(held.epoch, 2)
        assert (await broker.replay("u", behind)).resync == ResyncReason.UNKNOWN_EPOCH
        everything = await broker.replay("u", Position(fresh.record.epoch, 0))
        assert [r.data for r in everything.records] == [b'{"n":5}']
        # A planned restart loses nothing, yet cannot be told from a restore.
        server.restart_saved()
        again = await broker.replay("u", fresh.record.position)
        assert again.resync == ResyncReason.UNKNOWN_EPOCH
        assert again.head.epoch not in (held.epoch, fresh.record.epoch)
        # Within one server's life the epoch stays put.
        assert (await broker.replay("u", again.head)).resync is None
    finally:
        await broker.close()


# -- a catch-up read that live records overtook -------------------------------------------
def record(offset: int, epoch: str) -> Record:
    return Record("u", epoch, offset, b'{"n":%d}' % offset)


def frame(r: Record) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (str(r.position).encode(), r.data)


def frames(conn: Connection) -> list[tuple[str, str]]:
    return [(e.event, e.id) for e in Decoder().feed((conn.outlet.take() or b"").decode())]


def live_in_new_epoch(*offsets: int) -> Connection:
    """A stream at old-5 that live records then moved into epoch "new"."""
    conn = Connection("u", None, 100, 0.0, after=Position("old", 5))
    conn.start(Replay(Position("old", 5), []))
    for offset in offsets:
        assert conn.offer(record(offset, "new"), frame(record(offset, "new")))
    return conn


def test_a_stale_catch_up_never_moves_a_stream_back_nor_resyncs_it_twice() -> None:
    conn = live_in_new_epoch(1, 2)
    assert frames(conn) == [("resync", "new-0"), ("message", "new-1"), ("message", "new-2")]
    # The catch-up read from old-5 began before new-2 was appended.
    conn.catch_up(Replay(Position("new", 1), [], resync=ResyncReason.UNKNOWN_EPOCH))
    assert conn.outlet.take() is None and conn.position == Position("new", 2)
    assert conn.offer(record(3, "new"), frame(record(3, "new")))
    assert frames(conn) == [("message", "new-3")]


def test_a_stale_read_of_an_old_epoch_does_not_advance_the_new_one() -> None:
    conn = live_in_new_epoch(1)
    conn.outlet.take()
    # Records of the old epoch up to 9, read before the history was lost.
    conn.catch_up(Replay(Position("old", 9), [record(n, "old") for n in range(6, 10)]))
    assert conn.outlet.take() is None and conn.position == Position("new", 1)
    assert conn.offer(record(2, "new"), frame(record(2, "new")))
    assert frames(conn) == [("message", "new-2")]


def test_a_catch_up_into_a_new_epoch_resyncs_once_at_its_head() -> None:
    conn = live_in_new_epoch()
    conn.catch_up(Replay(Position("new", 4), [], resync=ResyncReason.UNKNOWN_EPOCH))
    assert frames(conn) == [("resync", "new-4")]
    assert conn.offer(record(4, "new"), frame(record(4, "new")))  # covered by the resync
    assert conn.offer(record(5, "new"), frame(record(5, "new")))
    assert frames(conn) == [("message", "new-5")]


def test_an_expired_catch_up_resyncs_without_moving_back() -> None:
    conn = live_in_new_epoch(1, 2, 3)
    conn.outlet.take()
    conn.catch_up(Replay(Position("new", 2), [], resync=ResyncReason.EXPIRED))
    assert frames(conn) == [("resync", "new-3")]
    assert conn.position == Position("new", 3)


# -- a full Redis ---------------------------------------------------------------------
async def test_full_redis_answers_retry_and_not_ready_and_stops_growing(
        redis_server, start_service, open_stream, http) -> None:
    limit = 20 * 1024 * 1024
    server = redis_server("--maxmemory", str(limit), "--maxmemory-policy", "noeviction")
    service = start_service(backend="redis", redis_url=server.url, history_size=100_000,
                            keepalive_seconds=0.2)
    watcher = await open_stream(service, token=service.token("watcher"))
    for n in (1, 2, 3):
        service.publish("watcher", n)
    first = (await watcher.take(3))[0]

    title = "x" * 16_000
    outcomes: list[str] = []
    refused_at: int | None = None
    sent = 0
    for batch in range(70):  # 70 × 50 × 16 kB: well over twice the limit
        entries = [bulk_entry(str(n), json.loads(cloudevent(
            {**task_event(f"filler-{batch % 5}", n), "task": {"id": n, "title": title}},
            str(uuid.uuid4()))), None) for n in range(50)]
        reply = await http.post(f"{service.url}/task-updates", content=bulk_body(entries),
                                headers=BULK_HEADERS)
        assert reply.status_code == 200, reply.text
        outcomes += daprd_bulk_outcomes(reply, [str(n) for n in range(50)]).values()
        sent += 50 * len(title)
        if refused_at is None and "retry" in outcomes:
            refused_at = sent
        if refused_at is not None and sent >= refused_at + limit:
            break
    assert refused_at is not None, f"Redis took {sent} bytes over a {limit}-byte limit"
    assert set(outcomes) <= {"ack", "retry"}
    used = int(server.info("memory")["used_memory"])
    assert used < limit * 1.1, f"used_memory {used} for a limit of {limit}"

    ready = await http.get(f"{service.url}/readyz")
    assert ready.status_code == 503 and "memory" in ready.json()["reason"], ready.text
    assert "out of memory" in service.logs()
    # Open streams stay, and a client may still come back and replay.
    assert not watcher.ended.is_set()
    back = await open_stream(service, token=service.token("watcher"), last_event_id=first.id)
    assert await back.tasks(2) == [2, 3]

    # Memory freed: the next delivery is stored, and that ends the alarm.
    server.command("CONFIG", "SET", "maxmemory", str(4 * limit))
    service.publish("watcher", 4)
    assert (await http.get(f"{service.url}/readyz")).status_code == 200
    assert await back.tasks(1) == [4] and await watcher.tasks(1) == [4]



# -- Redis 7 or later ----------------------------------------------------------------------
def test_servers_before_redis_7_are_refused_with_a_reason() -> None:
    assert unsupported({"redis_version": "7.0.15"}) is None
    assert unsupported({"redis_version": "8.2.1"}) is None
    reason = unsupported({"redis_version": "6.2.14"})
    assert reason == "Redis 6.2.14 is not supported: 7.0 or later is required"
    assert unsupported({"redis_version": ""}) is not None


async def test_ping_names_a_replica_that_cannot_take_appends(
        redis_server) -> None:
    primary = redis_server()
    standby = redis_server("--replicaof", "127.0.0.1", str(primary.port))
    broker = RedisBroker(Settings(backend="redis", redis_url=standby.url))
    try:
        with pytest.raises(BackendUnavailable, match="read only replica"):
            await broker.ping()
    finally:
        await broker.close()
