"""The process's one pub/sub connection: subscriptions, live records, reconnects.

Subscriptions
    Sharded (``SSUBSCRIBE``, Redis 7 or later).  ``subscribe`` returns once
    Redis confirmed the subscription, so a reader can replay right after it
    without a gap.  Redis answers every ``SSUBSCRIBE`` of a channel with one
    confirmation, in the order the commands were sent; each sent command
    queues its waiters and each confirmation resolves the oldest queue of
    that channel.  Commands are sent under one lock, and ``unsubscribe``
    re-checks under it whether the user is wanted again, so interleaved
    calls end in the state of the last call.

Liveness
    A PING every ``timeout`` seconds keeps replies flowing; a connection
    that is silent for three periods (a hung or stopped server) is dropped.

Sign-outs
    A message ``!revoked <not_before>`` on a user's channel is a sign-out,
    handed to ``on_revoked``; a record's message starts with its epoch.  One
    announced while the connection was down is not heard: the broker reads
    the stored ones on ``on_resumed``.

Reconnects
    With backoff, logged once per outage.  A server older than Redis 7 is
    refused on connect, with that reason.  A new connection subscribes every
    wanted user again and, once all are confirmed, calls ``on_resumed`` so
    readers catch up from history: records published while the connection
    was down reach them that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from .broker import Record
from .errors import BackendUnavailable
from .logs import escape
from .metrics import Operation
from .redis_keys import user_keys, user_of_channel

__all__ = ["MINIMUM_VERSION", "Subscriber", "supports_sharded_pubsub", "unsupported_version"]

logger = logging.getLogger(__name__)

#: The prefix of a sign-out message (see :data:`~.redis_scripts.REVOKE`).
_REVOKED = b"!revoked "
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0
_Waiters = list["asyncio.Future[None]"]
#: The oldest Redis major version served: sharded pub/sub and script flags.
MINIMUM_VERSION = 7


def unsupported_version(version: str) -> str | None:
    """Why a server reporting ``redis_version`` ``version`` cannot be used, or None."""
    major = version.split(".")[0]
    if major.isdigit() and int(major) >= MINIMUM_VERSION:
        return None
    return f"Redis {version or '(unknown version)'} is not supported: 7.0 or later is required"


def _version(info: bytes) -> str:
    for line in info.splitlines():
        if line.startswith(b"redis_version:"):
            return line.partition(b":")[2].strip().decode("ascii", "replace")
    return ""


def supports_sharded_pubsub(info: bytes) -> bool:
    """Whether ``INFO server`` output names Redis 7 or later (``SSUBSCRIBE``)."""
    return unsupported_version(_version(info)) is None


class _Unsupported(Exception):
    """The server is older than :data:`MINIMUM_VERSION`."""


@dataclass(eq=False)
class _Link:
    """One connected pub/sub connection and what it still owes us."""

    conn: AbstractConnection
    expect: dict[bytes, deque[_Waiters]] = field(default_factory=dict)
    # Channels subscribed on connect whose confirmation is still due.
    initial: set[bytes] = field(default_factory=set)
    ready: bool = False

    def expect_confirmation(self, channel: bytes, waiters: _Waiters) -> None:
        self.expect.setdefault(channel, deque()).append(waiters)

    def confirmed(self, channel: bytes) -> None:
        queue = self.expect.get(channel)
        if queue:
            for waiter in queue.popleft():
                if not waiter.done():
                    waiter.set_result(None)
            if not queue:
                del self.expect[channel]
        self.initial.discard(channel)


class Subscriber:
    """``pool`` makes the connections; its socket timeout is how long one may stay
    silent before it counts as dead, so it must span a few ``timeout`` periods."""

    def __init__(self, pool: ConnectionPool, db: int, timeout: float, where: str,
                 errors: dict[Operation, int] | None = None) -> None:
        self._pool = pool
        #: Failures by operation: a lost connection or a failed reconnect is one ``pubsub``.
        self._errors = errors if errors is not None else dict.fromkeys(Operation, 0)
        self._db = db
        self._timeout = timeout
        self._where = where
        self._wanted: set[str] = set()
        self._waiters: dict[bytes, _Waiters] = {}
        self._lock = asyncio.Lock()
        self._link: _Link | None = None
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
        link = self._link
        return link is not None and link.ready and link.conn.is_connected

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
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
        await self._pool.aclose()

    async def subscribe(self, user_id: str) -> None:
        channel = self._channel(user_id)
        self._wanted.add(user_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._lock:
            link = self._link
            if link is not None and link.conn.is_connected:
                link.expect_confirmation(channel, [waiter])
                await self._send(link, "SSUBSCRIBE", channel)
            else:
                # The next connection subscribes every wanted user and answers it.
                self._waiters.setdefault(channel, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, 2 * self._timeout)
        except TimeoutError:
            pending = self._waiters.get(channel)
            if pending is not None and waiter in pending:
                pending.remove(waiter)
                if not pending:
                    del self._waiters[channel]
            raise BackendUnavailable("Redis did not confirm the subscription in time") from None

    async def unsubscribe(self, user_id: str) -> None:
        self._wanted.discard(user_id)
        async with self._lock:
            link = self._link
            if user_id in self._wanted or link is None or not link.conn.is_connected:
                return
            await self._send(link, "SUNSUBSCRIBE", self._channel(user_id))

    # -- the connection ---------------------------------------------------------
    def _channel(self, user_id: str) -> bytes:
        return user_keys(user_id, self._db).channel.encode("ascii")

    async def _send(self, link: _Link, *args: str | bytes) -> None:
        try:
            await link.conn.send_command(*args, check_health=False)
        except (RedisError, OSError) as exc:
            # The reader fails on the same broken socket and reconnects.
            logger.debug("pub/sub command %s not sent: %s", args[0], exc)

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
        link: _Link | None = None
        pinger: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(2 * self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("INFO", "server", check_health=False)
                info = await conn.read_response()
            reason = unsupported_version(_version(info if isinstance(info, bytes) else b""))
            if reason is not None:
                raise _Unsupported(reason)
            self.unsupported = None
            link = _Link(conn)
            async with self._lock:
                channels = [self._channel(user_id) for user_id in self._wanted]
                for channel in channels:
                    link.expect_confirmation(channel, self._waiters.pop(channel, []))
                link.initial.update(channels)
                self._link = link
                if channels:
                    commands = [("SSUBSCRIBE", channel) for channel in channels]
                    await conn.send_packed_command(conn.pack_commands(commands), False)
            if not link.initial:
                self._ready(link)
            pinger = asyncio.create_task(self._ping(link), name="sse-redis-pubsub-ping")
            while True:
                self._handle(link, await conn.read_response())
        finally:
            if pinger is not None:
                pinger.cancel()
            if link is not None:
                self._forget(link)
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)

    async def _ping(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(self._timeout)
            async with self._lock:
                if self._link is not link:
                    return
                await self._send(link, "PING")

    def _handle(self, link: _Link, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return  # PONG outside subscribed mode
        kind = reply[0]
        if kind == b"smessage" and len(reply) == 3:
            self._message(reply[1], reply[2])
        elif kind == b"ssubscribe":
            link.confirmed(reply[1])
            if not link.ready and not link.initial:
                self._ready(link)

    def _message(self, channel: bytes, payload: bytes) -> None:
        user_id = user_of_channel(channel)
        if user_id is None or user_id not in self._wanted:
            return
        if payload.startswith(_REVOKED):
            self._revoked(user_id, payload[len(_REVOKED):])
            return
        epoch, _, rest = payload.partition(b" ")
        offset, _, data = rest.partition(b" ")
        try:
            record = Record(user_id, epoch.decode("ascii"), int(offset), data)
        except ValueError:
            logger.warning("ignoring a malformed record on channel %r", channel)
            return
        try:
            self._on_record(record)
        except Exception:
            logger.exception("delivering record %s failed", record.position)

    def _revoked(self, user_id: str, value: bytes) -> None:
        try:
            not_before = float(value)
        except ValueError:
            logger.warning("ignoring a malformed sign-out for user %s", escape(user_id))
            return
        try:
            self._on_revoked(user_id, not_before)
        except Exception:
            logger.exception("ending the streams of user %s failed", escape(user_id))

    # -- state -----------------------------------------------------------------
    def _ready(self, link: _Link) -> None:
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

    def _forget(self, link: _Link) -> None:
        """Hand the waiters of a dead connection to the next one."""
        if self._link is link:
            self._link = None
            self._connected.clear()
        for channel, queue in link.expect.items():
            for waiters in queue:
                pending = [waiter for waiter in waiters if not waiter.done()]
                if pending:
                    self._waiters.setdefault(channel, []).extend(pending)
        link.expect.clear()
