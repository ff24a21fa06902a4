"""The socket outlet: frames wait for the loop turn's end, then leave in one write per stream,
in order, counted against the stream's byte bound while they wait."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sse_service.outlet import chunk
from sse_service.socket_outlet import SocketOutlet, SocketWrites
from support import aeventually

pytestmark = pytest.mark.timeout(10)


class RecordingTransport(asyncio.WriteTransport):
    """What the outlet sees of a socket: each ``write`` kept as it was made."""

    def __init__(self, buffered: int = 0, fail: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.fail = fail
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise OSError("the socket is gone")
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = self.closing = True


def outlet(transport: asyncio.WriteTransport, writes: SocketWrites, chunked: bool = True,
           byte_limit: int = 1_000_000, ended: list[bool] | None = None) -> SocketOutlet:
    return SocketOutlet(transport, chunked, byte_limit,
                        (ended if ended is not None else []).append, writes)


async def written(transport: RecordingTransport, count: int = 1) -> list[bytes]:
    """The transport's writes, once there are ``count`` of them (the turn's end wrote them)."""
    await aeventually(lambda: len(transport.writes) >= count, 5,
                      message=lambda: f"{len(transport.writes)} writes, not {count}")
    return transport.writes


async def test_frames_of_one_turn_leave_in_one_write_at_its_end_in_order() -> None:
    transport, writes = RecordingTransport(), SocketWrites()
    out = outlet(transport, writes)
    for frame in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
        assert out.put(frame)
    assert transport.writes == []
    assert await written(transport) == [chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n")
                                + chunk(b"data: 3\n\n")]
    assert out.put(b"data: 4\n\n", chunk(b"data: 4\n\n"))
    assert (await written(transport, 2))[1:] == [chunk(b"data: 4\n\n")]


async def test_every_stream_with_frames_gets_its_own_single_write() -> None:
    writes = SocketWrites()
    transports = [RecordingTransport() for _ in range(3)]
    outlets = [outlet(t, writes, chunked=False) for t in transports]
    for n in range(2):
        for out in outlets:
            assert out.put(b"data: %d\n\n" % n)
    for transport in transports:
        await written(transport)
    assert [t.writes for t in transports] == [[b"data: 0\n\ndata: 1\n\n"]] * 3


async def test_a_write_outside_the_bound_follows_the_frames_already_waiting() -> None:
    transport, writes = RecordingTransport(), SocketWrites()
    out = outlet(transport, writes, chunked=False)
    assert out.put(b"data: live\n\n")
    out.write(b"data: replayed\n\n")
    assert b"".join(transport.writes) == b"data: live\n\ndata: replayed\n\n"


async def test_closing_writes_what_waits_first_unless_told_to_drop_it() -> None:
    writes = SocketWrites()
    kept, dropped = RecordingTransport(), RecordingTransport()
    for transport, flush in ((kept, True), (dropped, False)):
        out = outlet(transport, writes)
        assert out.put(b"data: last\n\n")
        out.close(b"event: close\n\n", flush)
    assert b"".join(kept.writes) == (chunk(b"data: last\n\n") + chunk(b"event: close\n\n")
                                     + b"0\r\n\r\n")
    assert b"".join(dropped.writes) == chunk(b"event: close\n\n") + b"0\r\n\r\n"


async def test_waiting_frames_count_against_the_byte_bound() -> None:
    transport, writes = RecordingTransport(buffered=100), SocketWrites()
    frame = b"x" * 100
    out = outlet(transport, writes, chunked=False, byte_limit=350)
    assert out.put(frame) and out.put(frame)
    assert not out.put(frame), "100 buffered and 200 waiting leave no room for 100 more"
    assert out.backlog == (2, 300)
    assert await written(transport) == [frame * 2]


async def test_a_socket_closed_before_the_turn_ends_gets_nothing_and_holds_back_nobody() -> None:
    writes = SocketWrites()
    gone, failing, alive = RecordingTransport(), RecordingTransport(fail=True), RecordingTransport()
    outlets = [outlet(t, writes, chunked=False) for t in (gone, failing, alive)]
    for out in outlets:
        assert out.put(b"data: x\n\n")
    gone.closing = True
    assert await written(alive) == [b"data: x\n\n"]
    assert gone.writes == [] and failing.aborted
    assert outlets[2].put(b"data: y\n\n"), "a later turn is scheduled again"
    assert await written(alive, 2) == [b"data: x\n\n", b"data: y\n\n"]


async def test_frames_reach_a_real_socket_in_order() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    try:
        out = outlet(transport, SocketWrites(), chunked=False)
        for n in range(100):
            assert out.put(b"data: %d\n\n" % n)
        expected = b"".join(b"data: %d\n\n" % n for n in range(100))
        theirs.setblocking(False)
        received = b""
        while len(received) < len(expected):
            received += await asyncio.wait_for(loop.sock_recv(theirs, 65536), 5)
        assert received == expected
    finally:
        transport.close()
        theirs.close()
