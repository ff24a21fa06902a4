"""GET /events against a real uvicorn: framing, fan-out, keepalive, expiry, limits."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import pytest

from conftest import Service, make_token

pytestmark = pytest.mark.timeout(60)


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
    assert "event:" not in "".join(stream.raw)
