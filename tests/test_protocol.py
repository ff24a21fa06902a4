"""The HTTP protocol's bounds: request heads are limited in size and in time."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from support import DAPR_HEADERS, Service, aeventually, cloudevent, task_event

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_path")]


async def _connect(service: Service) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", service.port)


async def _closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent until it closed the connection."""
    received = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            received += chunk
    return received


@pytest.fixture
def service(start_service) -> Service:
    return start_service(max_header_bytes=16_384, header_timeout_seconds=1)


async def test_a_head_over_the_budget_gets_431(service):
    reader, writer = await _connect(service)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
    reply = await _closed_within(reader, 5)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
    writer.close()


async def test_a_flood_of_header_bytes_is_stopped_and_not_buffered(service):
    before = service.rss_kib()
    reader, writer = await _connect(service)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    with contextlib.suppress(ConnectionError):
        # Up to 64 MiB of one header value; the server must stop us long before.
        for _ in range(1024):
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
    with contextlib.suppress(ConnectionError):
        await _closed_within(reader, 10)
    assert sent < 16 * 2**20, f"the server read {sent} bytes of one header"
    assert service.rss_kib() - before < 8 * 1024
    writer.close()


async def test_many_headers_over_the_budget_get_431(service):
    reader, writer = await _connect(service)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    reply = await _closed_within(reader, 5)
    assert reply.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_a_large_head_under_the_budget_and_a_large_body_are_served(service):
    reader, writer = await _connect(service)
    cookie = b"c=" + b"v" * 12_000
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()
    # A body larger than the head budget arrives in the same reads as the head.
    task = task_event("big", 1)
    task["task"]["blob"] = "x" * 50_000
    reply = service.deliver(cloudevent(task))
    assert reply.status_code == 200 and reply.json()["status"] == "SUCCESS"


@pytest.mark.parametrize("partial", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1"])
async def test_a_head_that_never_completes_is_closed(service, partial):
    loop = asyncio.get_running_loop()
    clients = [await _connect(service) for _ in range(20)]
    started = loop.time()
    for _, writer in clients:
        writer.write(partial)
    for reader, _ in clients:
        reply = await _closed_within(reader, 5)
        assert reply in (b"",) or reply.startswith(b"HTTP/1.1 408 ")
    # Closed by the 1 s deadline, not by a minutes-long default.
    assert loop.time() - started < 4
    for _, writer in clients:
        writer.close()


async def test_pipelined_and_keep_alive_requests_still_work(service):
    reader, writer = await _connect(service)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies = []
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        bodies.append(json.loads(await reader.readexactly(length)))
    assert bodies[0] == {"status": "ok"} and bodies[1]["status"] == "ready"
    writer.close()


async def test_a_live_stream_outlives_the_head_deadline(start_service, open_stream):
    service = start_service(header_timeout_seconds=1, keepalive_seconds=0.2)
    stream = await open_stream(service, token=service.token("long"))
    # Ten keepalives span two seconds, twice the head deadline.
    def ten_keepalives() -> bool:
        assert not stream.ended.is_set(), "the stream was closed by the head deadline"
        return stream.comments.count("keepalive") >= 10

    await aeventually(ten_keepalives, 10, message="ten keepalives", interval=0.05)
    service.publish("long", 7)
    assert await stream.tasks(1) == [7]


def _post(body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in {**DAPR_HEADERS, **(headers or {})}.items())
    return (f"POST /task-updates HTTP/1.1\r\nHost: x\r\n{lines}content-length: {len(body)}"
            "\r\n\r\n").encode() + body


async def _responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        answers.append((int(head.split()[1]), await reader.readexactly(length)))
    return answers


async def test_pipelined_deliveries_are_answered_in_order(service, open_stream):
    stream = await open_stream(service, token=service.token("piped-in"))
    reader, writer = await _connect(service)
    writer.write(b"".join(_post(cloudevent(task_event("piped-in", n))) for n in range(1, 17)))
    answers = await _responses(reader, 16)
    assert answers == [(200, b'{"status":"SUCCESS"}')] * 16
    assert await stream.tasks(16) == list(range(1, 17))
    writer.close()


async def test_deliveries_mixed_with_other_requests_keep_their_order(start_service):
    service = start_service(max_delivery_bytes=65_536, APP_API_TOKEN="app-token")
    ok = {"dapr-api-token": "app-token"}
    requests = [
        _post(cloudevent(task_event("mixed", 1)), ok),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        _post(cloudevent(task_event("mixed", 2)), {"dapr-api-token": "wrong"}),
        _post(b"x" * 70_000, ok),  # over the limit, by its Content-Length
        _post(cloudevent(task_event("mixed", 3)), ok),
    ]
    reader, writer = await _connect(service)
    writer.write(b"".join(requests))
    answers = await _responses(reader, 5)
    assert [status for status, _ in answers] == [200, 200, 401, 200, 200]
    replies = [json.loads(body) for _, body in answers]
    assert replies[3]["status"] == "DROP" and "SSE_MAX_DELIVERY_BYTES" in replies[3]["reason"]
    del replies[3]["reason"]
    assert replies == [
        {"status": "SUCCESS"}, {"status": "ok"}, {"detail": "missing or wrong dapr-api-token"},
        {"status": "DROP"}, {"status": "SUCCESS"}]
    writer.close()
