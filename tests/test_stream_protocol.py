"""stream_protocol: who owns a connection, under a real uvicorn on this event loop.

A stream request is served by StreamProtocol itself; every other first request,
and whatever follows a stream request on a reusable connection, is handed over
with its bytes to BoundedHttpProtocol (uvicorn's httptools protocol), which
answers it as if it had owned the connection from the start.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import uvicorn

from sse_service.app import Application
from sse_service.config import Settings
from sse_service.protocol import BoundedHttpProtocol, bounded_protocol
from sse_service.stream_protocol import StreamProtocol, stream_protocol
from support.service import SECRET, free_port, make_token
from support.waiting import aeventually

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def serving(**settings: object) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """The service with its socket stream path, under uvicorn on a free port."""
    config_ = Settings(jwt_secret=SECRET, metrics_port=0, **settings)  # type: ignore[arg-type]
    app = Application(config_)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
        http=stream_protocol(bounded_protocol(config_, app.stream, app.deliveries), app.stream)))
    task = asyncio.ensure_future(server.serve())
    try:
        await aeventually(lambda: server.started or task.done(), 10, message="uvicorn to start")
        assert server.started, task.result()
        yield port, server
    finally:
        # Streams left open by a failed test would hold uvicorn's shutdown.
        for connection in list(server.server_state.connections):
            connection.transport.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def owners(server: uvicorn.Server) -> list[type]:
    return [type(connection) for connection in server.server_state.connections]


async def read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, f"connection ended before {marker!r}: {seen!r}"
        seen += data
    return seen


def stream_request(token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET /events HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()


def is_stream_owner(kind: type) -> bool:
    return issubclass(kind, StreamProtocol) and not issubclass(kind, BoundedHttpProtocol)


async def test_a_stream_is_served_with_no_uvicorn_protocol_under_it() -> None:
    async with serving() as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(stream_request(make_token("owner-1")))
        await read_until(reader, b"event: ready")
        kinds = owners(server)
        assert len(kinds) == 1 and is_stream_owner(kinds[0]), kinds
        writer.close()
        await aeventually(lambda: not server.server_state.connections, 5,
                          message="the closed stream to leave the connection set")


@pytest.mark.parametrize("split", [1, 3, 1000], ids=["byte-by-byte", "three-bytes", "whole"])
async def test_a_stream_request_in_any_pieces_is_recognised(split: int) -> None:
    async with serving() as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = stream_request(make_token("owner-2"))
        for start in range(0, len(request), split):
            writer.write(request[start:start + split])
            await writer.drain()
        await read_until(reader, b"event: ready")
        assert [is_stream_owner(kind) for kind in owners(server)] == [True]
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /eventsx HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /events/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    # A stream request with a body: answered by uvicorn's cycle, which reads it.
    b"GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
], ids=["other-path", "longer-path", "sub-path", "other-method", "with-a-body"])
async def test_any_other_first_request_is_handed_over_with_its_bytes(
        request_bytes: bytes) -> None:
    async with serving() as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        answer = await read_until(reader, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 ") and b"text/event-stream" not in answer
        assert [issubclass(kind, BoundedHttpProtocol) for kind in owners(server)] == [True]
        writer.close()


async def test_requests_pipelined_behind_a_refused_stream_are_answered_in_order() -> None:
    async with serving() as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(stream_request() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     + stream_request(make_token("owner-3")))
        try:
            seen = await read_until(reader, b"event: ready")
            assert re.findall(rb"HTTP/1\.1 (\d{3}) ", seen) == [b"401", b"200", b"200"]
            assert seen.index(b'{"status":"ok"}') < seen.index(b"event: ready")
            # After the refusal uvicorn's protocol owns the connection, and serves its stream.
            assert [issubclass(kind, BoundedHttpProtocol) for kind in owners(server)] == [True]
        finally:
            writer.close()


async def test_an_unparseable_head_gets_uvicorns_own_answer() -> None:
    async with serving() as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(65536), 10)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request"), answer
        writer.close()


@pytest.mark.parametrize("send", [
    lambda: b"GET /events HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000,
    lambda: b"GET /events HTTP/1.1\r\n" + b"X-Many: b\r\n" * 4_000 + b"\r\n",
], ids=["unfinished", "complete"])
async def test_a_stream_head_over_the_budget_is_431(send: Callable[[], bytes]) -> None:
    async with serving(max_header_bytes=16_384) as (port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(send())
        answer = await read_until(reader, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        assert await asyncio.wait_for(reader.read(), 10) is not None
        writer.close()


async def test_a_stalled_stream_head_is_408_after_the_deadline() -> None:
    async with serving(header_timeout_seconds=0.5) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n")
        answer = await asyncio.wait_for(reader.read(65536), 10)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
