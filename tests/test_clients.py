"""Widely used SSE clients against a real service: every message they hand over has data.

httpx-sse (and @microsoft/fetch-event-source) make a message of every block a
blank line ends, data or not; code that parses each message as JSON then
crashes on the empty ones.  The npm ``eventsource`` package, driven from Node,
reads the same stream the way a browser does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from sse_service.sse import Decoder
from support import Service

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("stream_path")]

#: The newest release line that still runs on Node 18 and 20.
EVENTSOURCE = "eventsource@3.0.7"


class HttpxSseStream:
    """One stream read by httpx-sse's ``aiter_sse``; the bytes it parses are
    also scanned for keepalive lines, so a test can wait for them."""

    def __init__(self) -> None:
        self.messages: list[ServerSentEvent] = []
        self.keepalives = 0
        self.changed = asyncio.Event()
        self.ended = asyncio.Event()

    async def read(self, service: Service, token: str, last_event_id: str | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                aconnect_sse(client, "GET", f"{service.url}/events", headers=headers) as source,
            ):
                response = source.response
                assert response.status_code == 200
                texts = response.aiter_text

                async def watched() -> AsyncIterator[str]:
                    async for text in texts():
                        self.keepalives += text.count(": keepalive\n")
                        self._changed()
                        yield text

                response.aiter_text = watched  # type: ignore[method-assign]
                async for message in source.aiter_sse():
                    self.messages.append(message)
                    self._changed()
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def until(self, check: Any, timeout: float = 10) -> None:
        async def wait() -> None:
            while not check():
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)

    def types(self) -> list[str]:
        return [json.loads(m.data)["type"] for m in self.messages]


def assert_all_json(messages: list[ServerSentEvent]) -> None:
    for message in messages:
        assert message.data, f"a message without data: {message!r}"
        json.loads(message.data)


async def test_httpx_sse_gets_only_json_messages_from_open_to_close(start_service):
    service = start_service(keepalive_seconds=0.2)
    stream = HttpxSseStream()
    reader = asyncio.ensure_future(stream.read(service, service.token("hx")))
    try:
        await stream.until(lambda: stream.messages)
        # Keepalives before and between events, the way an idle stream has them.
        await stream.until(lambda: stream.keepalives >= 2)
        await asyncio.to_thread(service.publish, "hx", 1)
        await stream.until(lambda: len(stream.messages) >= 2)
        seen = stream.keepalives
        await stream.until(lambda: stream.keepalives >= seen + 2)
        await asyncio.to_thread(service.publish, "hx", 2)
        await stream.until(lambda: len(stream.messages) >= 3)
        service.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(stream.ended.wait(), 15)
    finally:
        reader.cancel()
    assert_all_json(stream.messages)
    assert stream.types() == ["ready", "task_update", "task_update", "close"]
    ready, first, second, close = stream.messages
    assert ready.event == "ready" and close.event == "close"
    assert json.loads(close.data)["reason"] == "server_shutdown"
    assert [json.loads(m.data)["task"]["id"] for m in (first, second)] == [1, 2]
    # retry arrived with the first message instead of as one of its own.
    assert ready.retry is not None and 3000 * 0.75 <= ready.retry <= 3000 * 1.25


async def test_httpx_sse_resuming_gets_the_replay_first_and_nothing_empty(start_service):
    service = start_service(keepalive_seconds=0.2)
    for task_id in (1, 2, 3):
        service.publish("hr", task_id)
    first = HttpxSseStream()
    reader = asyncio.ensure_future(first.read(service, service.token("hr")))
    try:
        await first.until(lambda: first.messages)
        ready_id = first.messages[0].id
    finally:
        reader.cancel()
    assert first.types() == ["ready"]
    again = HttpxSseStream()
    # Resuming from before task 2: no ready frame, the replay opens the stream.
    position = ready_id.rsplit("-", 1)[0] + "-1"
    reader = asyncio.ensure_future(again.read(service, service.token("hr"),
                                              last_event_id=position))
    try:
        await again.until(lambda: len(again.messages) >= 2 and again.keepalives >= 2)
        await asyncio.to_thread(service.publish, "hr", 4)
        await again.until(lambda: len(again.messages) >= 3)
    finally:
        reader.cancel()
    assert_all_json(again.messages)
    assert [json.loads(m.data)["task"]["id"] for m in again.messages] == [2, 3, 4]


# -- the npm eventsource package, from Node ------------------------------------------

NODE_CLIENT = r"""
const { EventSource } = require("eventsource");
const es = new EventSource(process.argv[2]);
const say = (kind, event) => process.stdout.write(JSON.stringify(
  { kind, type: event.type, data: event.data, lastEventId: event.lastEventId }) + "\n");
es.onopen = () => process.stdout.write(JSON.stringify({ kind: "open" }) + "\n");
es.onmessage = (event) => say("message", event);
es.addEventListener("ready", (event) => say("ready", event));
es.addEventListener("close", (event) => { say("close", event); es.close(); });
es.onerror = (event) => process.stdout.write(
  JSON.stringify({ kind: "error", message: String(event.message ?? "") }) + "\n");
"""


@pytest.fixture(scope="session")
def node_eventsource(pytestconfig: pytest.Config) -> Path:
    """A folder (in pytest's git-ignored cache) with the npm package installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to drive the npm eventsource client")
    folder = Path(pytestconfig.cache.mkdir("node-eventsource"))
    manifest = folder / "node_modules" / "eventsource" / "package.json"
    wanted = EVENTSOURCE.split("@", 1)[1]
    if not manifest.exists() or json.loads(manifest.read_text())["version"] != wanted:
        done = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(folder),
             EVENTSOURCE], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"npm install {EVENTSOURCE} failed: {done.stderr[-400:]}")
    script = folder / "client.cjs"
    script.write_text(NODE_CLIENT)
    return script


async def test_npm_eventsource_sees_ready_events_and_the_close_reason(
    start_service, node_eventsource
):
    service = start_service(keepalive_seconds=0.2, jwt_leeway_seconds=0)
    url = f"{service.url}/events?token={service.token('node', ttl=3)}"
    node = await asyncio.create_subprocess_exec(
        "node", str(node_eventsource), url, cwd=node_eventsource.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert node.stdout is not None
    seen: list[dict[str, Any]] = []

    async def next_line() -> dict[str, Any]:
        assert node.stdout is not None
        line = await asyncio.wait_for(node.stdout.readline(), 15)
        assert line, f"node ended: {seen}"
        seen.append(json.loads(line))
        return seen[-1]

    try:
        while (await next_line())["kind"] != "ready":
            pass
        await asyncio.to_thread(service.publish, "node", 1)
        while (await next_line())["kind"] != "message":
            pass
        # The token runs out: the server names the reason before it ends the stream.
        while (await next_line())["kind"] != "close":
            pass
        assert await asyncio.wait_for(node.wait(), 10) == 0
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    kinds = [entry["kind"] for entry in seen]
    assert kinds == ["open", "ready", "message", "close"], seen
    ready, message, close = seen[1:]
    assert json.loads(message["data"])["task"]["id"] == 1
    assert json.loads(close["data"]) == {"type": "close", "reason": "token_expired"}
    # This client reports each block's own id: the close has none, so the
    # position it would resume from is still the task event's.
    assert ready["lastEventId"] and message["lastEventId"] != ready["lastEventId"]
    assert close["lastEventId"] == ""


# -- the bytes on the wire ---------------------------------------------------------


async def test_chunked_framing_holds_with_bare_comment_lines(start_service):
    """Each write is one HTTP chunk, and a keepalive is now a chunk of one comment line."""
    service = start_service(keepalive_seconds=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(f"GET /events HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {service.token('wire')}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    bodies: list[bytes] = []

    async def next_chunk() -> bytes:
        size = int(await asyncio.wait_for(reader.readline(), 10), 16)
        body = await asyncio.wait_for(reader.readexactly(size + 2), 10)
        assert body.endswith(b"\r\n"), body
        bodies.append(body[:-2])
        return bodies[-1]

    try:
        while sum(body.startswith(b": keepalive") for body in bodies) < 2:
            await next_chunk()
        service.process.send_signal(signal.SIGTERM)
        while await next_chunk():
            pass
    finally:
        writer.close()
    stream = b"".join(bodies).decode()
    keepalives = [body for body in bodies if body.startswith(b": keepalive")]
    assert keepalives and set(keepalives) == {b": keepalive\n"}, keepalives
    assert stream.startswith("retry: ") and ": connected\n" in stream
    # Every chunk ends at a line's end: no frame is split across writes.
    assert all(body.endswith(b"\n") for body in bodies[:-1]), bodies
    events = [(e.event, json.loads(e.data)["type"]) for e in Decoder().feed(stream)]
    assert events == [("ready", "ready"), ("close", "close")]
    # Between the two: comment lines only, and no blank line (no data-less block).
    middle = stream.split('data: {"type":"ready"}\n\n', 1)[1].split("event: close", 1)[0]
    assert "\n\n" not in middle and middle.count(": keepalive\n") >= 2
    assert set(middle.splitlines()) <= {": keepalive", ": closing: server_shutdown"}, middle
