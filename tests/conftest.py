"""Fixtures: real service processes on free ports, real SSE clients, daprd-shaped deliveries.

Every fixture is a factory that cleans up what it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from sse_service.sse import Decoder, ServerSentEvent

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
NO_TRACE = "00-00000000000000000000000000000000-0000000000000000-00"
DAPR_HEADERS = {
    "content-type": "application/cloudevents+json",
    "traceparent": NO_TRACE,
    "pubsubname": "taskpubsub",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_token(user: str, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    now = time.time()
    payload = {"sub": user, "iat": int(now), "exp": now + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def cloudevent(payload: object, event_id: str | None = None, **fields: Any) -> bytes:
    """A delivery body as daprd sends it: compact JSON, keys sorted."""
    envelope = {
        "data": payload,
        "datacontenttype": "application/json",
        "id": event_id or str(uuid.uuid4()),
        "pubsubname": "taskpubsub",
        "source": "task-api",
        "specversion": "1.0",
        "time": "2026-11-27T08:00:00Z",
        "topic": "task-updates",
        "traceid": NO_TRACE,
        "traceparent": NO_TRACE,
        "tracestate": "",
        "type": "com.dapr.event.sent",
        **fields,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def task_event(user: str, task_id: int, kind: str = "task.created") -> dict[str, Any]:
    return {"event_type": kind, "user_id": user, "task": {"id": task_id, "title": f"t{task_id}"}}


@dataclass
class Service:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """The service process's resident set size now (VmRSS), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (kib,) = (line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib)

    def token(self, user: str, ttl: float = 3600, **claims: Any) -> str:
        return make_token(user, ttl, **claims)

    def deliver(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/task-updates", content=body,
                          headers=headers or DAPR_HEADERS, timeout=10)

    def publish(self, user: str, task_id: int, kind: str = "task.created",
                event_id: str | None = None) -> str:
        reply = self.deliver(cloudevent(task_event(user, task_id, kind), event_id))
        assert reply.status_code == 200, reply.text
        status = reply.json()["status"]
        assert status == "SUCCESS", status
        return status

    async def apublish(self, client: httpx.AsyncClient, user: str, task_id: int) -> None:
        reply = await client.post(f"{self.url}/task-updates", headers=DAPR_HEADERS,
                                  content=cloudevent(task_event(user, task_id)))
        assert reply.json()["status"] == "SUCCESS", reply.text

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            if time.monotonic() > deadline:
                raise AssertionError(f"log line {text!r} never appeared:\n{self.logs()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"service did not start:\n{log.read_text()}")


def launch(tmp: Path, port: int | None = None, **settings: Any) -> Service:
    """Start ``sse-service serve`` in a subprocess and wait until it is healthy.

    Settings are keyword arguments: ``keepalive_seconds=0.2`` sets
    ``SSE_KEEPALIVE_SECONDS``; upper-case names (``APP_API_TOKEN``) pass as they are.
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SSE_") and k not in ("APP_API_TOKEN", "BETTER_AUTH_SECRET")}
    env.update({"SSE_JWT_SECRET": SECRET, "SSE_LOG_LEVEL": "info",
                "SSE_DRAIN_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
    for key, value in settings.items():
        name = key if key.isupper() else "SSE_" + key.upper()
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    log = Path(tempfile.mkstemp(prefix=f"service-{port}-", suffix=".log", dir=tmp)[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sse_service", "serve", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", port, process, log, env)
    try:
        wait_healthy(service.url, process, log)
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service


@contextmanager
def running_service(tmp: Path, **settings: Any) -> Iterator[Service]:
    """A service for a whole module (``start_service`` is per test)."""
    service = launch(tmp, **settings)
    try:
        yield service
    finally:
        service.stop(signal.SIGKILL)


@pytest.fixture(params=["socket", "asgi"])
def stream_path(request: pytest.FixtureRequest) -> str:
    """Both ways ``/events`` is served: a module that asks for this fixture (e.g.
    ``pytestmark = pytest.mark.usefixtures("stream_path")``) runs every test on both."""
    return str(request.param)


@pytest.fixture
def start_service(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Service]]:
    """Factory: ``start_service(**settings)``, or ``start_service(port=P)`` to restart there."""
    started: list[Service] = []
    path = request.getfixturevalue("stream_path") if "stream_path" in request.fixturenames \
        else None

    def start(port: int | None = None, **settings: Any) -> Service:
        if path is not None:
            settings.setdefault("stream_path", path)
        service = launch(tmp_path, port, **settings)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(signal.SIGKILL if service.process.poll() is None else signal.SIGTERM)


@dataclass
class Stream:
    """A real SSE client over httpx: events are read in the background."""

    response: httpx.Response
    events: asyncio.Queue[ServerSentEvent | None] = field(default_factory=asyncio.Queue)
    comments: list[str] = field(default_factory=list)
    last_event_id: str = ""
    retry: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    raw: list[str] = field(default_factory=list)
    ready: list[ServerSentEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        decoder = Decoder()
        try:
            async for text in self.response.aiter_text():
                self.raw.append(text)
                for line in text.splitlines():
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                for event in decoder.feed(text):
                    if event.event == "ready":
                        # The position marker of a new stream, not a task event.
                        self.ready.append(event)
                    else:
                        await self.events.put(event)
                self.last_event_id = decoder.last_event_id
                self.retry = decoder.retry
                self.opened.set()
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            await self.events.put(None)

    async def next(self, timeout: float = 5) -> ServerSentEvent:
        event = await asyncio.wait_for(self.events.get(), timeout)
        if event is None:
            raise EOFError("stream ended")
        return event

    async def take(self, count: int, timeout: float = 10) -> list[ServerSentEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def tasks(self, count: int, timeout: float = 10) -> list[int]:
        return [json.loads(e.data)["task"]["id"] for e in await self.take(count, timeout)]

    def remaining(self) -> list[ServerSentEvent]:
        """What an ended stream delivered that the test has not taken yet."""
        events = []
        while not self.events.empty():
            event = self.events.get_nowait()
            if event is not None:
                events.append(event)
        return events

    async def wait_ended(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.response.aclose()


@pytest.fixture
async def open_stream() -> AsyncIterator[Callable[..., Any]]:
    """``await open_stream(service, token=..., last_event_id=..., params=...)`` → Stream.

    Asserts a 200 unless ``expect`` is given; returns the response for other statuses.
    """
    client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=None))
    streams: list[Stream] = []

    async def open_(service: Service, token: str | None = None, last_event_id: str | None = None,
                    params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                    expect: int = 200) -> Any:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            hdrs["last-event-id"] = last_event_id
        request = client.build_request("GET", f"{service.url}/events", headers=hdrs,
                                       params=params)
        response = await client.send(request, stream=True)
        if response.status_code != expect:
            body = await response.aread()
            raise AssertionError(f"expected {expect}, got {response.status_code}: {body!r}")
        if expect != 200:
            await response.aread()
            return response
        stream = Stream(response)
        stream.task = asyncio.ensure_future(stream._read())
        streams.append(stream)
        # The preamble is written once the stream is registered: from here on
        # nothing published can be missed.
        await asyncio.wait_for(stream.opened.wait(), 10)
        return stream

    yield open_
    for stream in streams:
        await stream.close()
    await client.aclose()
