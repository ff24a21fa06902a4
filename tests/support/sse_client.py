"""A real SSE client over httpx for the tests: events are read in the background.

Every byte goes through :class:`sse_service.sse.Decoder`, comments included, so
a line split across reads (a TCP segment, a proxy's buffer) is seen whole.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from sse_service.sse import Decoder, ServerSentEvent

__all__ = ["Stream", "connect"]


@dataclass
class Stream:
    """One open ``/events`` response.

    ``events`` holds what the service sent except ``ready`` (the position
    marker of a new stream, kept in ``ready``); ``raw`` is the decoded text of
    each read, ``received`` the bytes read so far.
    """

    response: httpx.Response
    events: asyncio.Queue[ServerSentEvent | None] = field(default_factory=asyncio.Queue)
    comments: list[str] = field(default_factory=list)
    last_event_id: str = ""
    retry: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    raw: list[str] = field(default_factory=list)
    ready: list[ServerSentEvent] = field(default_factory=list)
    received: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> Stream:
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        decoder = Decoder(on_comment=self.comments.append)
        # An event stream is UTF-8 whatever its content type says; a character
        # split across reads waits in the decoder for its last byte.
        text_decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            async for chunk in self.response.aiter_bytes():
                self.received += len(chunk)
                text = text_decoder.decode(chunk)
                if text:
                    self.raw.append(text)
                for event in decoder.feed(text):
                    if event.event == "ready":
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


async def connect(client: httpx.AsyncClient, url: str, token: str | None = None,
                  last_event_id: str | None = None, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None, expect: int = 200) -> Any:
    """``GET url`` as an EventSource would: a :class:`Stream` once its first bytes
    arrived, or, when ``expect`` is not 200, the whole response with that status."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        hdrs["last-event-id"] = last_event_id
    request = client.build_request("GET", url, headers=hdrs, params=params)
    response = await client.send(request, stream=True)
    if response.status_code != expect:
        body = await response.aread()
        await response.aclose()
        raise AssertionError(f"expected {expect}, got {response.status_code}: {body!r}")
    if expect != 200:
        await response.aread()
        return response
    stream = Stream(response).start()
    try:
        # The preamble is written once the stream is registered: from here on
        # nothing published can be missed.
        await asyncio.wait_for(stream.opened.wait(), 10)
    except BaseException:
        await stream.close()
        raise
    return stream
