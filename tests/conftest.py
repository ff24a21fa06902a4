"""Fixtures: real service processes on free ports, real SSE clients, real redis-servers.

Every fixture is a factory that cleans up what it started; the helpers they
use live in tests/support/.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import Service, Stream, connect, launch, unavailable
from support.redis import REDIS_SERVER, RedisServer, redis_servers


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
        opened = await connect(client, f"{service.url}/events", token, last_event_id, params,
                               headers, expect)
        if isinstance(opened, Stream):
            streams.append(opened)
        return opened

    yield open_
    for stream in streams:
        await stream.close()
    await client.aclose()


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(*extra_args)`` starts one ``redis-server``; all stop afterwards."""
    if REDIS_SERVER is None:
        unavailable("redis-server is not on PATH; `make system-deps` installs it")
    with redis_servers() as start:
        yield start

