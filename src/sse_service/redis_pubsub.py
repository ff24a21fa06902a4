"""The process's one pub/sub connection: connect, read and route, keep alive, reconnect.

Subscriptions
    Which users are wanted and who waits for a confirmation live in
    :mod:`.redis_subscriptions`; this connection subscribes them all again
    whenever it connects.

Messages
    Each message is parsed by :mod:`.redis_messages`: a record goes to
    ``on_record``, a sign-out (``!revoked <not_before>``) to ``on_revoked``.
    One announced while the connection was down is not heard: the broker
    reads the stored ones on ``on_resumed``.

Liveness
    A PING every ``timeout`` seconds keeps replies flowing; a connection
    that is silent for three periods (a hung or stopped server) is dropped.

Reconnects
    With backoff, logged once per outage.  A server older than Redis 7 is
    refused on connect, with that reason (:func:`.redis_connect.unsupported`).
    A new connection subscribes every wanted user again and, once all are
    confirmed, calls ``on_resumed`` so readers catch up from history: records
    published while the connection was down reach them that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from .broker import Record
from .logs import escape
from .metrics import Operation
from .redis_connect import unsupported
from .redis_keys import user_of_channel
from .redis_messages import CONFIRMED, MESSAGE, Revocation, parse
from .redis_subscriptions import Link, Subscriptions

__all__ = ["Subscriber"]

logger = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0


class _Unsupported(Exception):
    """The server is older than :data:`.redis_connect.MINIMUM_VERSION`."""


class Subscriber:
    """``pool`` makes the connections; its socket timeout is how long one may stay
    silent before it counts as dead, so it must span a few ``timeout`` periods."""

    def __init__(self, pool: ConnectionPool, db: int, timeout: float, where: str,
                 errors: dict[Operation, int] | None = None) -> None:
        self._pool = pool
        #: Failures by operation: a lost connection or a failed reconnect is one ``pubsub``.
        self._errors = errors if errors is not None else dict.fromkeys(Operation, 0)
        self._timeout = timeout
        self._where = where
        self._subscriptions = Subscriptions(db, timeout)
        # The same set, read for every message.
        self._wanted = self._subscriptions.users
        self._task: asyncio.Task[None] | None = None
        self._on_record: Callable[[Record], None] = lambda record: None
        self._on_resumed: Callable[[], None] = lambda: None
        self._on_revoked: Callable[[str, float], None] = lambda user_id, not_before: None
        self._ever_ready = False
        self._lost_since: float | None = None
        self._failures = 0
        self._connected = asyncio.Event()
        #: Why the server cannot be used (too old), once a connection found out.
        self.unsupported: str | None = None

    @property
    def wanted(self) -> list[str]:
        """The users subscribed (or to be subscribed again on reconnect)."""
        return list(self._wanted)

    @property
    def connected(self) -> bool:
        """Connected with every wanted subscription confirmed."""
        link = self._subscriptions.link
        return link is not None and link.ready and link.up

    async def wait_connected(self, timeout: float) -> bool:
        """Whether the connection is (or, within ``timeout``, comes) up."""
        if not self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    def start(self, on_record: Callable[[Record], None], on_resumed: Callable[[], None],
              on_revoked: Callable[[str, float], None] | None = None) -> None:
        self._on_record, self._on_resumed = on_record, on_resumed
        if on_revoked is not None:
            self._on_revoked = on_revoked
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sse-redis-pubsub")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._subscriptions.cancel()
        await self._pool.aclose()

    async def subscribe(self, user_id: str) -> None:
        """Returns once Redis confirmed it; ``BackendUnavailable`` if it does not in time."""
        await self._subscriptions.subscribe(user_id)

    async def unsubscribe(self, user_id: str) -> None:
        await self._subscriptions.unsubscribe(user_id)

    # -- the connection ---------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(f"{type(exc).__name__}: {exc}")
            except _Unsupported as exc:
                self.unsupported = str(exc)
                self._lost(str(exc))
            except Exception as exc:
                logger.exception("pub/sub connection to %s failed unexpectedly", self._where)
                self._lost(repr(exc))
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(self._failures, 10))
            self._failures += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _session(self) -> None:
        conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        link: Link | None = None
        pinger: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(2 * self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("INFO", "server", check_health=False)
                info = await conn.read_response()
            reason = unsupported(info if isinstance(info, bytes) else b"")
            if reason is not None:
                raise _Unsupported(reason)
            self.unsupported = None
            link = Link(conn)
            await self._subscriptions.attach(link)
            if not link.initial:
                self._ready(link)
            pinger = asyncio.create_task(self._ping(link), name="sse-redis-pubsub-ping")
            while True:
                self._handle(link, await conn.read_response())
        finally:
            if pinger is not None:
                pinger.cancel()
            if link is not None and self._subscriptions.detach(link):
                self._connected.clear()
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)

    async def _ping(self, link: Link) -> None:
        while True:
            await asyncio.sleep(self._timeout)
            if not await self._subscriptions.send(link, "PING"):
                return

    # -- routing ---------------------------------------------------------------
    def _handle(self, link: Link, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # PONG outside subscribed mode
        kind = reply[0]
        if kind == MESSAGE and len(reply) == 3:
            self._message(reply[1], reply[2])
        elif kind == CONFIRMED:
            link.confirmed(reply[1])
            if not link.ready and not link.initial:
                self._ready(link)

    def _message(self, channel: bytes, payload: bytes) -> None:
        user_id = user_of_channel(channel)
        if user_id is None or user_id not in self._wanted:
            return
        try:
            message = parse(user_id, payload)
        except ValueError:
            logger.warning("ignoring a malformed message on channel %r", channel)
            return
        if isinstance(message, Revocation):
            try:
                self._on_revoked(user_id, message.not_before)
            except Exception:
                logger.exception("ending the streams of user %s failed", escape(user_id))
            return
        try:
            self._on_record(message)
        except Exception:
            logger.exception("delivering record %s failed", message.position)

    # -- state -----------------------------------------------------------------
    def _ready(self, link: Link) -> None:
        link.ready = True
        self._failures = 0
        self._connected.set()
        self._connected = asyncio.Event()
        if self._lost_since is not None:
            logger.info(
                "Redis pub/sub connection to %s is back after %.1fs (%d users subscribed)",
                self._where,
                asyncio.get_running_loop().time() - self._lost_since,
                len(self._wanted),
            )
            self._lost_since = None
        if self._ever_ready:
            self._on_resumed()
        self._ever_ready = True

    def _lost(self, reason: str) -> None:
        self._errors[Operation.PUBSUB] += 1
        if self._lost_since is None:
            self._lost_since = asyncio.get_running_loop().time()
            logger.warning(
                "Redis pub/sub connection to %s unavailable (%s); reconnecting",
                self._where,
                reason,
            )
        else:
            logger.debug("Redis pub/sub reconnect to %s failed: %s", self._where, reason)
