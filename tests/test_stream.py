"""GET /events against a real uvicorn: framing, fan-out, keepalive, expiry, limits."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from sse_service.sse import Decoder, ServerSentEvent
from support import (
    DAPR_HEADERS,
    SECRET,
    Service,
    aeventually,
    cloudevent,
    free_port,
    make_token,
    wait_healthy,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_path")]


@pytest.fixture
def service(start_service) -> Service:
    return start_service()


async def test_stream_starts_with_retry_and_comment_and_delivers_events(service, open_stream):
    stream = await open_stream(service, token=service.token("42"))
    first = stream.raw[0]
    assert first.startswith("retry: ")
    retry = int(first.split("\n", 1)[0].removeprefix("retry: "))
    assert 3000 * 0.75 <= retry <= 3000 * 1.25
    assert "\n: connected\n" in first
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.response.headers["cache-control"].startswith("no-cache")
    assert stream.response.headers["x-accel-buffering"] == "no"
    service.publish("42", 1)
    event = await stream.next()
    assert event.event == "message"
    assert json.loads(event.data) == {
        "type": "task_update", "event": "task.created", "task": {"id": 1, "title": "t1"}}
    assert event.id and event.id == stream.last_event_id
    # Task frames carry no event name: onmessage handlers see them.
    blocks = "".join(stream.raw).split("\n\n")
    task_blocks = [b for b in blocks if "task_update" in b]
    assert task_blocks and not any("event:" in b for b in task_blocks)


async def test_each_user_gets_only_their_events_on_every_tab(service, open_stream):
    tabs = {user: [await open_stream(service, token=service.token(user)) for _ in range(3)]
            for user in ("alice", "bob")}
    for n in range(1, 11):
        service.publish("alice" if n % 2 else "bob", n)
    for stream in tabs["alice"]:
        assert await stream.tasks(5) == [1, 3, 5, 7, 9]
    for stream in tabs["bob"]:
        assert await stream.tasks(5) == [2, 4, 6, 8, 10]
    # Nothing else is waiting for anyone: a marker event arrives next.
    service.publish("alice", 99)
    service.publish("bob", 98)
    for stream in tabs["alice"]:
        assert await stream.tasks(1) == [99]
    for stream in tabs["bob"]:
        assert await stream.tasks(1) == [98]


async def test_resume_has_no_gap_and_no_duplicate_while_publishing(service, open_stream):
    total = 200
    token = service.token("resumer")
    first = await open_stream(service, token=token)

    async def publish_all() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(1, total + 1):
                await service.apublish(client, "resumer", n)

    publisher = asyncio.ensure_future(publish_all())
    taken = await first.take(40, timeout=20)
    received = [json.loads(e.data)["task"]["id"] for e in taken]
    # The 40th event's id: the client may have read (and queued) later ones in the
    # same read, and its last_event_id is already past them.
    last_id = taken[-1].id
    await first.close()
    second = await open_stream(service, token=token, last_event_id=last_id)
    received += await second.tasks(total - 40, timeout=30)
    await asyncio.wait_for(publisher, 30)
    assert received == list(range(1, total + 1))
    service.publish("resumer", 1000)
    assert await second.tasks(1) == [1000]


async def test_resume_from_query_parameter(service, open_stream):
    token = service.token("q")
    stream = await open_stream(service, token=token)
    service.publish("q", 1)
    await stream.tasks(1)
    position = stream.last_event_id
    await stream.close()
    service.publish("q", 2)
    service.publish("q", 3)
    again = await open_stream(service, token=token, params={"lastEventId": position})
    assert await again.tasks(2) == [2, 3]


async def test_new_stream_is_marked_with_a_position_before_any_event(service, open_stream):
    token = service.token("early")
    stream = await open_stream(service, token=token)
    assert stream.last_event_id, "the first block must carry an id"
    (ready,) = stream.ready
    assert (ready.id, json.loads(ready.data)) == (stream.last_event_id, {"type": "ready"})
    marker = stream.last_event_id
    await stream.close()
    service.publish("early", 1)
    again = await open_stream(service, token=token, last_event_id=marker)
    assert await again.tasks(1) == [1]


@pytest.mark.parametrize(
    ("last_id", "reason"),
    [("garbage id!", "invalid_id"), ("zz00zz-3", "unknown_epoch")],
)
async def test_unusable_ids_get_resync_then_live(service, open_stream, last_id, reason):
    user = f"resync-{reason}"
    service.publish(user, 1)
    stream = await open_stream(service, token=service.token(user), last_event_id=last_id)
    resync = await stream.next()
    assert resync.event == "resync"
    assert json.loads(resync.data) == {"type": "resync", "reason": reason}
    assert resync.id.endswith("-1")
    service.publish(user, 2)
    assert await stream.tasks(1) == [2]


async def test_id_beyond_the_newest_gets_resync(service, open_stream):
    service.publish("ahead", 1)
    probe = await open_stream(service, token=service.token("ahead"))
    epoch = probe.last_event_id.rsplit("-", 1)[0]
    stream = await open_stream(service, token=service.token("ahead"),
                               last_event_id=f"{epoch}-50")
    resync = await stream.next()
    assert (resync.event, json.loads(resync.data)["reason"]) == ("resync", "unknown_position")


async def test_id_older_than_history_gets_resync(start_service, open_stream):
    service = start_service(history_size=5)
    token = service.token("old")
    stream = await open_stream(service, token=token)
    service.publish("old", 1)
    await stream.tasks(1)
    old_id = stream.last_event_id
    await stream.close()
    for n in range(2, 11):
        service.publish("old", n)
    again = await open_stream(service, token=token, last_event_id=old_id)
    resync = await again.next()
    assert (resync.event, json.loads(resync.data)["reason"]) == ("resync", "expired")
    assert resync.id.endswith("-10")
    service.publish("old", 11)
    assert await again.tasks(1) == [11]


async def test_restart_of_memory_backend_gives_resync(start_service, open_stream):
    service = start_service()
    token = service.token("restart")
    stream = await open_stream(service, token=token)
    service.publish("restart", 1)
    await stream.tasks(1)
    service.stop(signal.SIGKILL)
    await stream.wait_ended()
    service = start_service(port=service.port)
    again = await open_stream(service, token=token, last_event_id=stream.last_event_id)
    resync = await again.next()
    assert (resync.event, json.loads(resync.data)["reason"]) == ("resync", "unknown_epoch")
    service.publish("restart", 2)
    assert await again.tasks(1) == [2]


async def test_keepalive_comments_while_idle(start_service, open_stream):
    service = start_service(keepalive_seconds=0.3)
    stream = await open_stream(service, token=service.token("idle"))
    loop = asyncio.get_running_loop()
    seen: list[float] = []

    def four_seen() -> bool:
        if stream.comments.count("keepalive") > len(seen):
            seen.append(loop.time())
        return len(seen) == 4

    await aeventually(four_seen, 5, interval=0.01,
                      message=lambda: f"4 keepalives: {stream.comments}")
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert all(0.15 <= gap <= 0.9 for gap in gaps), gaps


async def test_connection_limits(start_service, open_stream):
    service = start_service(max_connections_per_user=2, max_connections=3)
    await open_stream(service, token=service.token("u1"))
    await open_stream(service, token=service.token("u1"))
    refused = await open_stream(service, token=service.token("u1"), expect=429)
    assert "streams" in refused.json()["detail"]
    await open_stream(service, token=service.token("u2"))
    full = await open_stream(service, token=service.token("u3"), expect=503)
    assert int(full.headers["retry-after"]) > 0


async def test_graceful_shutdown_drains_streams(start_service, open_stream):
    service = start_service(drain_seconds=1.5)
    streams = [await open_stream(service, token=service.token(f"d{i}")) for i in range(5)]
    service.process.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(timeout=5) as client:
        ready = await _poll(lambda: client.get(f"{service.url}/readyz"), 503)
        assert ready.json()["reason"] == "draining"
        refused = await client.get(f"{service.url}/events",
                                   headers={"authorization": f"Bearer {service.token('late')}"})
        assert refused.status_code == 503 and "retry-after" in refused.headers
    for stream in streams:
        await stream.wait_ended(timeout=10)
        close = stream.remaining()[-1]
        assert (close.event, json.loads(close.data)) == (
            "close", {"type": "close", "reason": "server_shutdown"})
        # The close names no position: the client resumes from its last event.
        assert close.id == stream.last_event_id == stream.ready[0].id
    # A signal is how the service is meant to stop: a clean drain exits 0, quietly.
    assert service.process.wait(15) == 0
    logs = service.logs()
    assert "drained: 0 sockets still open" in logs
    assert "Traceback" not in logs and " ERROR " not in logs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_ends_the_process_with_status_0_and_no_traceback(
    start_service, open_stream, sig
):
    service = start_service(drain_seconds=0.2)
    await open_stream(service, token=service.token("bye"))
    service.process.send_signal(sig)
    code = await asyncio.get_running_loop().run_in_executor(None, service.process.wait, 15)
    logs = service.logs()
    assert code == 0, logs
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs


async def _poll(request, status: int, timeout: float = 5) -> httpx.Response:
    responses: list[httpx.Response] = []

    async def answered() -> httpx.Response | None:
        responses.append(await request())
        return responses[-1] if responses[-1].status_code == status else None

    return await aeventually(answered, timeout,
                             message=lambda: f"no {status}: {responses[-1].text}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_shows_a_clean_stream(service):
    token = service.token("curl")
    with subprocess.Popen(
        ["curl", "-sN", "-H", f"Authorization: Bearer {token}", f"{service.url}/events"],
        stdout=subprocess.PIPE, text=True,
    ) as curl:
        assert curl.stdout is not None
        lines = [curl.stdout.readline() for _ in range(6)]
        # retry and the comment share the ready frame's block: no data-less block.
        assert lines[0].startswith("retry: ") and lines[1] == ": connected\n"
        assert lines[2].startswith("id: ") and lines[3:] == [
            "event: ready\n", 'data: {"type":"ready"}\n', "\n"]
        service.publish("curl", 7)
        frame = [curl.stdout.readline() for _ in range(3)]
        curl.terminate()
    assert frame[0].startswith("id: ") and frame[2] == "\n"
    assert json.loads(frame[1].removeprefix("data: "))["task"] == {"id": 7, "title": "t7"}


class RawStream:
    """A deliberately slow client: a tiny receive buffer and reads only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.comments: list[str] = []
        self.decoder = Decoder(on_comment=self.comments.append)
        self.events: list[ServerSentEvent] = []
        self.closes: list[str] = []

    @classmethod
    async def open(cls, service: Service, token: str) -> RawStream:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", service.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        writer.write(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        return cls(reader, writer)

    async def read_all(self, timeout: float = 20) -> bool:
        """Read chunks until the server ends the response: True when it ended it
        cleanly, False when it aborted the connection (what it does to a client
        that has not read its last frames in time)."""
        try:
            while True:
                size = int(await asyncio.wait_for(self.reader.readline(), timeout), 16)
                data = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
                text = data[:-2].decode()
                for event in self.decoder.feed(text):
                    if event.event == "close":
                        self.closes.append(json.loads(event.data)["reason"])
                    elif event.event != "ready":
                        self.events.append(event)
                if size == 0:
                    return True
        except (ConnectionResetError, asyncio.IncompleteReadError, ValueError):
            return False


async def test_slow_client_is_cut_and_resumes_without_loss(start_service, open_stream):
    service = start_service(queue_size=32, max_event_bytes=70_000)
    token = service.token("slow")
    slow = await RawStream.open(service, token)
    fast = await open_stream(service, token=token)
    blob = "x" * 48_000
    total = 300
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(1, total + 1):
            body = cloudevent({"event_type": "task.updated", "user_id": "slow",
                               "task": {"id": n, "blob": blob}})
            reply = await client.post(f"{service.url}/task-updates", content=body,
                                      headers=DAPR_HEADERS)
            assert reply.json()["status"] == "SUCCESS"
    # The healthy stream of the same user got everything while the other stalled.
    assert await fast.tasks(total, timeout=30) == list(range(1, total + 1))
    service.wait_for_log("slow_consumer")
    if await slow.read_all():
        assert slow.closes == ["slow_consumer"]
    got = [json.loads(e.data)["task"]["id"] for e in slow.events]
    assert 0 < len(got) < total and got == list(range(1, len(got) + 1))
    slow.writer.close()
    again = await open_stream(service, token=token, last_event_id=slow.decoder.last_event_id)
    assert await again.tasks(total - len(got), timeout=30) == list(range(len(got) + 1, total + 1))


def test_access_log_can_be_switched_off(start_service):
    quiet = start_service(access_log=False)
    loud = start_service()
    for service in (quiet, loud):
        assert httpx.get(f"{service.url}/readyz?token=secret-value").status_code == 200
    loud.wait_for_log('"GET /readyz?token=*** HTTP/1.1" 200')
    assert "GET /readyz" not in quiet.logs()
    assert "secret-value" not in quiet.logs() + loud.logs()


async def _publish_blobs(service: Service, user: str, count: int, size: int,
                         until_log: str | None = None) -> int:
    """Publish ``count`` events of about ``size`` bytes; stop early once ``until_log``
    is in the service log.  Returns how many were published."""
    blob = "x" * size
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(1, count + 1):
            body = cloudevent({"event_type": "task.updated", "user_id": user,
                               "task": {"id": n, "blob": blob}})
            reply = await client.post(f"{service.url}/task-updates", content=body,
                                      headers=DAPR_HEADERS)
            assert reply.json()["status"] == "SUCCESS"
            if until_log is not None and until_log in service.logs():
                return n
    return count


async def test_a_stalled_client_frees_its_slot_at_once_and_never_holds_shutdown(
    start_service, open_stream
):
    service = start_service(max_connections_per_user=1, drain_seconds=1, queue_size=16)
    token = service.token("stall")
    stalled = await RawStream.open(service, token)  # never reads again
    published = await _publish_blobs(service, "stall", 400, 48_000, until_log="slow_consumer")
    assert published < 400, "the stalled stream was never cut"
    # Its slot is free at once: the same user may open a stream right away...
    again = await open_stream(service, token=token, last_event_id="")
    async with httpx.AsyncClient(timeout=5) as client:
        ready = (await client.get(f"{service.url}/readyz")).json()
    # ...and readiness counts only the live one.
    assert ready["streams"] == 1
    assert again.response.status_code == 200
    # Shutdown does not wait on the stalled socket beyond the drain window.
    loop = asyncio.get_running_loop()
    started = loop.time()
    service.process.send_signal(signal.SIGTERM)
    code = await loop.run_in_executor(None, service.process.wait, 15)
    took = loop.time() - started
    assert code == 0
    assert took < 1 + 1.0 + 2.5, f"exit took {took:.1f}s"
    logs = service.logs()
    assert "Traceback" not in logs and " ERROR " not in logs, logs
    stalled.writer.close()


async def test_bytes_bound_what_one_stream_may_hold(start_service):
    # Frames alone would allow 1024 x 60 kB here; the byte bound cuts at 256 KiB.
    service = start_service(queue_bytes=262_144, max_event_bytes=70_000)
    stalled = await RawStream.open(service, service.token("hoarder"))
    before = service.rss_kib()
    published = await _publish_blobs(service, "hoarder", 600, 60_000)
    service.wait_for_log("slow_consumer")
    grown_mib = (service.rss_kib() - before) / 1024
    # 600 x 60 kB is 34 MiB; history keeps its own copy (1000 events by default),
    # so allow for that once but not for a second, queued copy.
    history_mib = published * 60_000 / 2**20
    assert grown_mib < history_mib + 12, f"grew {grown_mib:.0f} MiB"
    assert "bytes unsent" in service.logs()
    stalled.writer.close()


async def _raw_request(service: Service, request: bytes) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(request)
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One complete response with a content-length: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_refusal_keeps_the_connection_for_pipelined_requests(service):
    bad = b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n"
    good = (f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{service.token('piped')}\r\n\r\n").encode()
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    # A refused stream, a health check and a stream, all in one write.
    reader, writer = await _raw_request(service, bad + health + good)
    head, body = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 401 ") and b"www-authenticate" in head.lower()
    assert json.loads(body)["detail"] == "malformed token"
    head, body = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body) == {"status": "ok"}
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    assert b"transfer-encoding: chunked" in head.lower()
    writer.close()


async def test_http_1_0_clients_get_an_unchunked_stream(service, stream_path):
    if stream_path == "asgi":
        pytest.skip("uvicorn's own cycle answers HTTP/1.0 with chunked framing")
    reader, writer = await _raw_request(
        service, (f"GET /events HTTP/1.0\r\nAuthorization: Bearer {service.token('old')}"
                  "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"chunked" not in head.lower()
    decoder = Decoder()
    ready: list[ServerSentEvent] = []
    async with asyncio.timeout(5):
        while not ready:
            ready = [e for e in decoder.feed((await reader.read(4096)).decode())
                     if e.event == "ready"]
    service.publish("old", 5)
    events: list[ServerSentEvent] = []
    async with asyncio.timeout(5):
        while not events:
            events = decoder.feed((await reader.read(4096)).decode())
    assert json.loads(events[0].data)["task"]["id"] == 5
    writer.close()


async def test_cors_preflight_and_credentialed_stream(start_service, open_stream):
    origin = "https://app.example"
    service = start_service(cors_origins=origin)
    async with httpx.AsyncClient(timeout=5) as client:
        pre = await client.options(f"{service.url}/events", headers={
            "origin": origin, "access-control-request-method": "GET",
            "access-control-request-headers": "authorization"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == origin
        assert "authorization" in pre.headers["access-control-allow-headers"]
        other = await client.options(f"{service.url}/events",
                                     headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = await client.get(f"{service.url}/events", headers={"origin": origin})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == origin
        wrong = await client.post(f"{service.url}/events")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, OPTIONS"
    stream = await open_stream(service, token=service.token("c"), headers={"origin": origin})
    assert stream.response.headers["access-control-allow-origin"] == origin
    assert stream.response.headers["access-control-allow-credentials"] == "true"


async def test_the_access_log_line_is_the_same_and_masks_tokens(service, open_stream):
    token = service.token("logged")
    await open_stream(service, params={"token": token})
    service.wait_for_log('"GET /events?token=*** HTTP/1.1" 200')
    async with httpx.AsyncClient(timeout=5) as client:
        await client.get(f"{service.url}/events?token=bad-{token}")
    service.wait_for_log('"GET /events?token=*** HTTP/1.1" 401')
    assert token not in service.logs()


async def test_the_portable_endpoint_runs_under_plain_uvicorn(tmp_path, open_stream):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env.update({"SSE_JWT_SECRET": SECRET, "SSE_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "sse_service.app:create_app",
             "--host", "127.0.0.1", "--port", str(port)], stdout=out,
            stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", port, process, log, env)
    try:
        wait_healthy(service.url, process, log)
        stream = await open_stream(service, token=make_token("plain"))
        service.publish("plain", 3)
        assert await stream.tasks(1) == [3]
    finally:
        service.stop(signal.SIGKILL)


async def test_a_stream_request_with_a_body_is_still_served(service):
    token = service.token("bodied")
    reader, writer = await _raw_request(
        service, (f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Length: 5\r\n\r\nhello").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head
    writer.close()
