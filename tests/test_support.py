"""The test support itself: the SSE client under split reads, the waits, missing programs."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sse_service.sse import ServerSentEvent
from support import Stream, aeventually, connect, eventually, free_port, launch

pytestmark = pytest.mark.timeout(30)

TESTS = Path(__file__).parent

# Every way a line can end, a comment with a colon in it, and characters of
# two and three bytes: read one byte at a time, each is split somewhere.
TRICKLED = (
    "retry: 2500\n"
    ": keepalive\n"
    'id: a-1\nevent: task\ndata: {"title":"h\u00e9llo \u2713"}\n\n'
    ":no space: and a colon\n"
    "data: line one\r\ndata: line two\r\n\r\n"
    "id: a-2\rdata: cr only\r\r"
    "event: ready\ndata: {}\n\n"
)


class TrickleServer:
    """Serves one event stream a byte per read: each byte is written only once
    the client has read the one before, so no two bytes arrive together."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.client: Stream | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/events"

    async def start(self) -> TrickleServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _read_by_client(self, count: int) -> bool:
        return self.client is not None and self.client.received == count

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            # No length and no chunked framing: the body ends when the connection does.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-store\r\nconnection: close\r\n\r\n")
            for sent in range(1, len(self.body) + 1):
                writer.write(self.body[sent - 1:sent])
                await writer.drain()
                await aeventually(lambda n=sent: self._read_by_client(n), 5, interval=0.001,
                                  message=f"the client to read byte {sent}")
        finally:
            writer.close()


async def test_the_client_decodes_a_stream_that_arrives_a_byte_at_a_time() -> None:
    server = await TrickleServer(TRICKLED.encode()).start()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
        stream = await connect(client, server.url)
        server.client = stream
        try:
            events = await stream.take(3)
            await stream.wait_ended()
        finally:
            await stream.close()
            await server.close()
    # One read per character: every field, comment and line break was split.
    assert len(stream.raw) == len(TRICKLED) and stream.received == len(TRICKLED.encode())
    assert stream.comments == ["keepalive", "no space: and a colon"]
    assert events == [
        ServerSentEvent('{"title":"h\u00e9llo \u2713"}', event="task", id="a-1", retry=2500),
        ServerSentEvent("line one\nline two", id="a-1", retry=2500),
        ServerSentEvent("cr only", id="a-2", retry=2500),
    ]
    assert stream.ready == [ServerSentEvent("{}", event="ready", id="a-2", retry=2500)]
    assert (stream.last_event_id, stream.retry, stream.remaining()) == ("a-2", 2500, [])


def test_eventually_returns_what_the_condition_returned() -> None:
    calls: list[int] = []

    def third_call() -> str | None:
        calls.append(1)
        return "done" if len(calls) == 3 else None

    assert eventually(third_call, 5, message="three calls", interval=0) == "done"
    assert len(calls) == 3


def test_eventually_fails_after_its_timeout_with_its_message() -> None:
    calls: list[int] = []
    with pytest.raises(AssertionError) as failed:
        eventually(lambda: calls.append(1), 0.2, message=lambda: f"nothing in {len(calls)} calls")
    # The message is read when the wait fails, with every call made by then.
    assert str(failed.value) == f"timed out after 0.2 s: nothing in {len(calls)} calls"
    assert len(calls) > 1


async def test_aeventually_awaits_a_coroutine_condition_and_fails_with_its_message() -> None:
    polls = 0

    async def second_poll() -> bool:
        nonlocal polls
        polls += 1
        await asyncio.sleep(0)
        return polls == 2

    assert await aeventually(second_poll, 5, message="two polls") is True
    with pytest.raises(AssertionError, match="^timed out after 0.1 s: never$"):
        await aeventually(lambda: False, 0.1, message="never")


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_missing_browser_skips_except_under_ci(tmp_path: Path, ci: str | None) -> None:
    (tmp_path / "test_needs_chromium.py").write_text(
        "from support.browser import require_chromium\n"
        "require_chromium()\n\n\ndef test_page():\n    pass\n")
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # Only the virtualenv on PATH: no chromium there.
    env.update(PATH=str(Path(sys.executable).parent), PYTHONPATH=str(TESTS))
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "`make system-deps` installs it" in done.stdout, done.stdout
    if ci is None:
        assert done.returncode == 0 and "1 passed, 1 skipped" in done.stdout, done.stdout
    else:
        # A collection error: the run stops there, and fails.
        assert done.returncode != 0 and "1 error" in done.stdout, done.stdout


def test_free_port_never_hands_out_one_port_twice() -> None:
    # A thousand bare binds here repeat a port a few dozen times; a service and its
    # metrics listener once got the same one.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_launch_says_when_its_port_was_taken_before_the_service_bound_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="address already in use"):
            launch(tmp_path, port)
