"""The hub in process: the memory broker, real connections and outlets, a clock the test moves.

No server and no real waiting: the hub reads time from the test's clock and
waits through the test's ``sleep``, which moves that clock, so the drain, the
ticker and the repair backoff run in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sse_service.broker import Position, Record, Replay, Sink
from sse_service.broker_memory import MemoryBroker
from sse_service.config import Settings
from sse_service.connection import Connection
from sse_service.errors import (
    BackendUnavailable,
    CapacityError,
    CloseReason,
    UserLimitError,
)
from sse_service.hub import Hub
from sse_service.metrics import Refusal
from sse_service.sse import Decoder

pytestmark = pytest.mark.timeout(10)

START = 1000.0


class Clock:
    """The hub's clock and sleep: sleeping moves the clock, and ``on_sleep`` sees each."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []
        self.on_sleep: list[Any] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        for watch in self.on_sleep:
            watch(self.now)
        self.slept.append(seconds)
        self.now += seconds


class Lossy:
    """A sink that loses the records whose offsets it is told, as a pub/sub hiccup would."""

    def __init__(self, hub: Hub, lose: set[int]) -> None:
        self._hub = hub
        self.lose = lose

    def deliver(self, record: Record) -> None:
        if record.offset not in self.lose:
            self._hub.deliver(record)

    def resumed(self) -> None:
        self._hub.resumed()

    def revoked(self, user_id: str, not_before: float) -> None:
        self._hub.revoked(user_id, not_before)


class FlakyBroker(MemoryBroker):
    """The memory broker, with subscriptions and replays that fail while told to."""

    def __init__(self) -> None:
        super().__init__(100, 3600)
        self.failing_subscribes = 0
        self.failing_replays = 0
        self.subscribes = 0
        #: When set, a subscription is held until it is done (``entered`` says one is).
        self.gate: asyncio.Future[None] | None = None
        self.entered = asyncio.Event()

    async def subscribe(self, user_id: str) -> None:
        self.subscribes += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate
        if self.failing_subscribes:
            self.failing_subscribes -= 1
            raise BackendUnavailable("redis is away")
        await super().subscribe(user_id)

    async def replay(self, user_id: str, after: Position | None) -> Replay:
        if self.failing_replays:
            self.failing_replays -= 1
            raise BackendUnavailable("redis is away")
        return await super().replay(user_id, after)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker() -> Iterator[FlakyBroker]:
    yield FlakyBroker()


def make_hub(broker: MemoryBroker, clock: Clock, **settings: Any) -> Hub:
    settings.setdefault("max_connect_rate", 1e6)
    return Hub(broker, Settings(**settings), clock=clock, sleep=clock.sleep)


async def started(broker: MemoryBroker, sink: Sink) -> None:
    await broker.start(sink)


def events(conn: Connection) -> list[tuple[str, str, str]]:
    """What the stream's client reads next: (event, id, data) of each message."""
    taken = conn.outlet.take() or b""
    return [(e.event, e.id, e.data) for e in Decoder().feed(taken.decode())]


def ids(conn: Connection) -> list[str]:
    return [id_ for event, id_, _ in events(conn) if event == "message"]


async def append(broker: MemoryBroker, user: str, *numbers: int) -> None:
    for n in numbers:
        await broker.append(user, f"k{n}", b'{"n":%d}' % n)


# -- gap repair ----------------------------------------------------------------------


async def test_a_missed_record_is_replayed_into_the_stream_in_order_without_duplicates(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    sink = Lossy(hub, lose={2, 3})
    await started(broker, sink)
    conn = await hub.open("u", None, None, None)
    epoch = conn.epoch
    assert [e[0] for e in events(conn)] == ["ready"]
    await append(broker, "u", 1)
    assert ids(conn) == [f"{epoch}-1"]
    # 2 and 3 are lost on their way; 4 and 5 arrive and reveal the hole.
    await append(broker, "u", 2, 3, 4, 5)
    assert conn.outlet.take() is None, "records after a hole must wait for the repair"
    await asyncio.wait_for(conn.outlet.wait(), 2)
    assert ids(conn) == [f"{epoch}-{n}" for n in (2, 3, 4, 5)]
    # Live again: the next record arrives once, a late copy of an old one not at all.
    await append(broker, "u", 6)
    hub.deliver(Record("u", epoch or "", 4, b'{"n":4}'))
    assert ids(conn) == [f"{epoch}-6"]
    assert hub.metrics.gap_repairs >= 1
    hub.close(conn)
    await hub.stop()
    await broker.close()


async def test_a_repair_waits_out_an_unavailable_backend_with_backoff(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    await started(broker, Lossy(hub, lose={1}))
    conn = await hub.open("u", None, None, None)
    events(conn)
    broker.failing_replays = 3
    await append(broker, "u", 1, 2)
    await asyncio.wait_for(conn.outlet.wait(), 2)
    assert clock.slept == [0.2, 0.4, 0.8]
    assert ids(conn) == [f"{conn.epoch}-1", f"{conn.epoch}-2"]
    hub.close(conn)
    await hub.stop()
    await broker.close()


# -- limits --------------------------------------------------------------------------


async def test_the_process_limit_refuses_with_503_and_a_closed_stream_frees_its_slot(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock, max_connections=2)
    await started(broker, hub)
    first = await hub.open("a", None, None, None)
    await hub.open("b", None, None, None)
    with pytest.raises(CapacityError) as refused:
        await hub.open("c", None, None, None)
    assert refused.value.status_code == 503
    assert refused.value.reason == "too many connections on this server"
    assert hub.metrics.refused[Refusal.CAPACITY] == 1
    assert (hub.count, hub.users) == (2, 2)
    hub.close(first)
    third = await hub.open("c", None, None, None)
    assert (hub.count, hub.users) == (2, 2) and not third.closed
    await hub.stop()
    await broker.close()


async def test_the_per_user_limit_refuses_with_429_and_leaves_other_users_alone(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock, max_connections_per_user=2)
    await started(broker, hub)
    mine = [await hub.open("u", None, None, None) for _ in range(2)]
    with pytest.raises(UserLimitError) as refused:
        await hub.open("u", None, None, None)
    assert refused.value.status_code == 429
    assert refused.value.reason == "more than 2 streams for this user"
    assert hub.metrics.refused[Refusal.USER_LIMIT] == 1
    other = await hub.open("v", None, None, None)
    assert not other.closed and hub.count == 3
    # A stream cut for any reason frees its slot at once, before its writer is done.
    mine[0].close(CloseReason.SLOW_CONSUMER, flush=False)
    again = await hub.open("u", None, None, None)
    assert not again.closed and hub.count == 3
    await hub.stop()
    await broker.close()


# -- drain ---------------------------------------------------------------------------


async def test_the_drain_closes_every_stream_with_server_shutdown_spread_over_the_window(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    await started(broker, hub)
    conns = [await hub.open(f"u{n}", None, None, None) for n in range(10)]
    for conn in conns:
        events(conn)
    seen: list[tuple[float, int]] = []

    def watch(now: float) -> None:
        seen.append((now - START, sum(conn.closed for conn in conns)))
        # Each writer is done once its stream is closed, as a real one would be.
        for conn in conns:
            if conn.closed and conn not in finished:
                finished.append(conn)
                hub.close(conn)

    finished: list[Connection] = []
    clock.on_sleep.append(watch)
    window = 1.0
    await hub.drain(window)
    assert all(conn.reason is CloseReason.SERVER_SHUTDOWN for conn in conns)
    for conn in conns:
        assert events(conn) == [("close", "", '{"type":"close","reason":"server_shutdown"}')]
    # Spread out: a batch at a time, never backwards, the last one within the window.
    counts = [closed for _, closed in seen]
    assert counts[0] < len(conns) and counts == sorted(counts)
    assert all(at < window for at, _ in seen)
    assert max(at for at, closed in seen if closed < len(conns)) < window
    # Nothing was left to flush, so the drain did not wait out the flush time.
    assert clock.now - START < window + 0.1
    assert hub.count == 0
    with pytest.raises(CapacityError) as refused:
        await hub.open("late", None, None, None)
    assert refused.value.status_code == 503 and refused.value.retry_after == 1
    assert hub.metrics.refused[Refusal.DRAINING] == 1
    await hub.stop()
    await broker.close()


async def test_the_drain_gives_stalled_writers_their_flush_time_and_no_more(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    await started(broker, hub)
    conn = await hub.open("u", None, None, None)
    await hub.drain(0.5)
    # The writer never finishes: the drain ends once the flush time has passed.
    assert conn.reason is CloseReason.SERVER_SHUTDOWN and hub.sockets == 1
    assert 1.0 <= clock.now - START <= 0.5 + 1.0 + 0.5 + 0.1
    hub.close(conn)
    await hub.stop()
    await broker.close()


# -- the ticker: token expiry and keepalives -----------------------------------------


async def test_a_stream_ends_with_token_expired_once_the_clock_passes_its_deadline(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    await started(broker, hub)
    conn = await hub.open("u", START + 30, None, None)
    later = await hub.open("u", START + 90, None, None)
    for stream in (conn, later):
        events(stream)
    clock.now = START + 29.9
    hub.tick()
    assert not conn.closed
    clock.now = START + 30
    hub.tick()
    assert conn.reason is CloseReason.TOKEN_EXPIRED and not later.closed
    assert events(conn) == [("close", "", '{"type":"close","reason":"token_expired"}')]
    assert hub.count == 1
    hub.close(conn)
    hub.close(later)
    await hub.stop()
    await broker.close()


async def test_an_idle_stream_gets_a_keepalive_each_keepalive_period_and_a_busy_one_none(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock, keepalive_seconds=8)
    await started(broker, hub)
    idle = await hub.open("idle", None, None, None)
    busy = await hub.open("busy", None, None, None)
    for stream in (idle, busy):
        events(stream)
    keepalives = []
    for n in range(1, 33):  # 16 s in ticks of half a second
        clock.now = START + n / 2
        if n % 2 == 0:
            await append(broker, "busy", n)
        hub.tick()
        if b": keepalive" in (idle.outlet.take() or b""):
            keepalives.append(n / 2)
        assert b"keepalive" not in (busy.outlet.take() or b"")
    assert len(keepalives) == 2
    assert keepalives[1] - keepalives[0] == pytest.approx(8, abs=1)
    hub.close(idle)
    hub.close(busy)
    await hub.stop()
    await broker.close()


# -- a broker that cannot subscribe ---------------------------------------------------


async def test_a_failed_subscribe_refuses_the_stream_with_503_and_frees_its_slot(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock, max_connections=1)
    await started(broker, hub)
    broker.failing_subscribes = 1
    with pytest.raises(BackendUnavailable) as refused:
        await hub.open("u", None, None, None)
    assert refused.value.status_code == 503
    assert (hub.count, hub.sockets, hub.users) == (0, 0, 0)
    # The slot is free and the failure not remembered: the next stream subscribes anew.
    conn = await hub.open("u", None, None, None)
    assert not conn.closed and broker.subscribes == 2
    await append(broker, "u", 1)
    assert ids(conn) == [f"{conn.epoch}-1"]
    hub.close(conn)
    await hub.stop()
    await broker.close()


async def test_streams_opening_together_share_one_subscription_and_its_failure(
    broker: FlakyBroker, clock: Clock,
) -> None:
    hub = make_hub(broker, clock)
    await started(broker, hub)
    broker.gate = asyncio.get_running_loop().create_future()
    broker.failing_subscribes = 1
    opening = [asyncio.ensure_future(hub.open("u", None, None, None)) for _ in range(2)]
    await asyncio.wait_for(broker.entered.wait(), 2)
    assert (hub.count, broker.subscribes) == (2, 1)
    broker.gate.set_result(None)
    for task in opening:
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(task, 2)
    assert (hub.count, hub.sockets, hub.users) == (0, 0, 0)
    await hub.stop()
    await broker.close()
