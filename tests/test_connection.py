"""Connection: the per-stream queue, its position and the slow-consumer cut."""

from __future__ import annotations

import asyncio

import pytest

from sse_service.broker import Position, Record, Replay
from sse_service.connection import Connection
from sse_service.sse import Decoder

pytestmark = pytest.mark.timeout(10)


def record(offset: int, epoch: str = "e1", user: str = "u") -> Record:
    return Record(user, epoch, offset, b'{"n":%d}' % offset)


def frame(r: Record) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (str(r.position).encode(), r.data)


def opened(limit: int = 100, head: int = 0, records: list[Record] | None = None) -> Connection:
    """A stream resumed from e1-0, opened on a history at ``head``."""
    conn = Connection("u", None, limit, 0.0, after=Position("e1", 0))
    conn.start(Replay(Position("e1", head), records or []))
    return conn


def decoded(conn: Connection) -> list[tuple[str, str, str]]:
    events = Decoder().feed((conn.outlet.take() or b"").decode())
    return [(e.event, e.id, e.data) for e in events]


def test_live_records_during_replay_are_queued_after_it_without_duplicates():
    conn = Connection("u", None, 100, 0.0, after=Position("e1", 1))
    # Records 3 and 4 arrive live while the history (after 1) is being read.
    for r in (record(3), record(4)):
        assert conn.offer(r, frame(r))
    assert conn.start(Replay(Position("e1", 3), [record(2), record(3)]))
    assert [e[1] for e in decoded(conn)] == ["e1-2", "e1-3", "e1-4"]


def test_a_hole_in_live_offsets_is_reported_and_not_skipped():
    conn = opened(head=1)
    assert not conn.offer(record(3), frame(record(3)))
    assert conn.outlet.take() is None
    assert conn.position == Position("e1", 1)
    conn.catch_up(Replay(Position("e1", 3), [record(2), record(3)]))
    assert [e[1] for e in decoded(conn)] == ["e1-2", "e1-3"]
    assert conn.offer(record(3), frame(record(3)))
    assert conn.outlet.take() is None


def test_a_new_epoch_under_an_open_stream_sends_resync_first():
    conn = opened(head=5)
    conn.offer(record(1, epoch="e2"), frame(record(1, epoch="e2")))
    events = decoded(conn)
    assert events[0] == ("resync", "e2-0", '{"type":"resync","reason":"history_lost"}')
    assert events[1][1] == "e2-1"


def test_overflow_cuts_the_stream_as_slow_consumer_and_frees_the_queue():
    conn = opened(limit=3)
    for n in range(1, 5):
        conn.offer(record(n), frame(record(n)))
    assert conn.reason == "slow_consumer"
    # What was queued is dropped; only the closing frame is left to send.
    assert conn.outlet.take() == (
        b': closing: slow_consumer\nevent: close\ndata: {"type":"close","reason":"slow_consumer"}'
        b"\n\n")


def test_replayed_history_does_not_count_against_the_limit():
    conn = opened(limit=2, head=10, records=[record(n) for n in range(1, 11)])
    conn.offer(record(11), frame(record(11)))
    assert not conn.closed
    assert len(decoded(conn)) == 11


def test_mark_is_a_ready_event_carrying_the_position():
    conn = Connection("u", None, 10, 0.0)
    conn.start(Replay(Position("e1", 7), []))
    decoder = Decoder()
    (ready,) = decoder.feed((conn.outlet.take() or b"").decode())
    assert (ready.event, ready.id, ready.data) == ("ready", "e1-7", '{"type":"ready"}')
    assert decoder.last_event_id == "e1-7"


async def test_wait_returns_when_a_frame_arrives_or_the_stream_closes():
    conn = opened()
    waiter = asyncio.ensure_future(conn.outlet.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    conn.offer(record(1), frame(record(1)))
    await asyncio.wait_for(waiter, 1)
    conn.outlet.take()
    waiter = asyncio.ensure_future(conn.outlet.wait())
    await asyncio.sleep(0)
    conn.close("token_expired")
    await asyncio.wait_for(waiter, 1)
    assert conn.reason == "token_expired"
