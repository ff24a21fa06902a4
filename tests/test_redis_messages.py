"""The channel message (sse_service/redis_messages.py): what the real scripts publish
on a real redis-server parses back to what was appended or revoked.

The listener is a plain redis-py pub/sub client, not the service's subscriber,
so the round trip checks the format itself: the Lua that writes it against the
Python that reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from sse_service.broker import Record
from sse_service.broker_redis import RedisBroker
from sse_service.config import Settings
from sse_service.redis_keys import user_keys
from sse_service.redis_messages import Revocation, parse
from support.redis import RedisServer

pytestmark = pytest.mark.timeout(30)

#: An id that needs encoding in the channel name.
USER = "ü {x}:1"
#: Data that starts with a space and holds spaces and what looks like a sign-out.
DATA = b' {"type": "task.updated", "title": "a  b !revoked 1", "n": "\xc3\xbc"}'


class Listener:
    """A plain sharded subscription to one user's channel."""

    def __init__(self, server: RedisServer, user_id: str) -> None:
        self.channel = user_keys(user_id).channel.encode()
        self._client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
        self._pubsub = self._client.pubsub()

    async def start(self) -> None:
        await self._pubsub.ssubscribe(self.channel)
        confirmation = await self._pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "ssubscribe", confirmation

    async def next(self) -> bytes:
        """The payload of the next message, within 5 s."""
        message = await self._pubsub.get_message(timeout=5)
        assert message is not None, "nothing was published within 5 s"
        assert message["type"] == "smessage" and message["channel"] == self.channel, message
        return bytes(message["data"])

    async def close(self) -> None:
        await self._pubsub.aclose()
        await self._client.aclose()


@pytest.fixture
async def on_redis(
        redis_server: Callable[..., RedisServer]) -> AsyncIterator[tuple[RedisBroker, Listener]]:
    server = redis_server()
    broker = RedisBroker(Settings(backend="redis", redis_url=server.url))
    listener = Listener(server, USER)
    await listener.start()
    yield broker, listener
    await listener.close()
    await broker.close()


async def test_a_record_published_by_append_parses_back_to_what_was_appended(
        on_redis: tuple[RedisBroker, Listener]) -> None:
    broker, listener = on_redis
    first = await broker.append(USER, "k1", DATA)
    heard = parse(USER, await listener.next())
    assert isinstance(heard, Record)
    assert heard == first.record
    assert (heard.user_id, heard.offset, heard.data) == (USER, 1, DATA)

    # A duplicate publishes nothing; a bulk delivery's appends publish in order.
    assert (await broker.append(USER, "k1", b"{}")).duplicate
    appended = await broker.append_many([(USER, "k2", b"{}"), (USER, "k3", b"x y z")])
    for result in appended:
        assert not isinstance(result, Exception)
        assert parse(USER, await listener.next()) == result.record
    assert [r.record.offset for r in appended if not isinstance(r, Exception)] == [2, 3]


async def test_a_sign_out_published_by_revoke_parses_back_to_the_value_kept(
        on_redis: tuple[RedisBroker, Listener]) -> None:
    broker, listener = on_redis
    await broker.revoke(USER, 1_700_000_000.25, 60)
    assert parse(USER, await listener.next()) == Revocation(USER, 1_700_000_000.25)
    # An older sign-out announces the one still in force.
    await broker.revoke(USER, 1_600_000_000.0, 60)
    assert parse(USER, await listener.next()) == Revocation(USER, 1_700_000_000.25)
    # And a sign-out is not mistaken for a record, nor a record for one.
    await broker.append(USER, "k1", b"!revoked 5")
    heard = parse(USER, await listener.next())
    assert isinstance(heard, Record) and heard.data == b"!revoked 5"


@pytest.mark.parametrize("payload", [
    b"", b"epoch", b"epoch x data", b"epoch  data", b"\xff\xfe 1 data", b"!revoked ",
    b"!revoked soon",
])
def test_a_malformed_message_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse("u", payload)


def test_the_documented_examples_parse() -> None:
    expected: list[Any] = [Record("u", "3f9a1c07be", 17, b'{"type":1}'),
                           Revocation("u", 1700000000.5)]
    payloads = [b'3f9a1c07be 17 {"type":1}', b"!revoked 1700000000.5"]
    assert [parse("u", payload) for payload in payloads] == expected
