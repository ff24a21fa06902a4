"""Which users this process wants subscribed, and who waits for Redis to confirm.

The wanted users outlive any one pub/sub connection: a new connection
subscribes all of them again (:meth:`Subscriptions.attach`).  ``subscribe``
returns once Redis confirmed the subscription, so a reader can replay right
after it without a gap.  Redis answers every ``SSUBSCRIBE`` of a channel with
one confirmation, in the order the commands were sent; each sent command
queues its waiters on the connection (:class:`Link`) and each confirmation
resolves the oldest queue of that channel.  Waiters of a connection that died
move to the next one (:meth:`Subscriptions.detach`).

Commands are sent under one lock, and ``unsubscribe`` re-checks under it
whether the user is wanted again, so interleaved calls for one user end in
the state of the last call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from .errors import BackendUnavailable
from .redis_keys import user_keys
from .redis_messages import SUBSCRIBE, UNSUBSCRIBE

__all__ = ["Link", "Subscriptions"]

logger = logging.getLogger(__name__)

_Waiters = list["asyncio.Future[None]"]


@dataclass(eq=False)
class Link:
    """One connected pub/sub connection and the confirmations it still owes."""

    conn: AbstractConnection
    expect: dict[bytes, deque[_Waiters]] = field(default_factory=dict)
    # Channels subscribed on connect whose confirmation is still due.
    initial: set[bytes] = field(default_factory=set)
    #: Every channel subscribed on connect is confirmed.
    ready: bool = False

    @property
    def up(self) -> bool:
        return bool(self.conn.is_connected)

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

    async def send(self, *args: str | bytes) -> None:
        try:
            await self.conn.send_command(*args, check_health=False)
        except (RedisError, OSError) as exc:
            # The reader fails on the same broken socket and reconnects.
            logger.debug("pub/sub command %s not sent: %s", args[0], exc)


class Subscriptions:
    """``timeout`` is the reply timeout; a confirmation may take twice that."""

    def __init__(self, db: int, timeout: float) -> None:
        self._db = db
        self._timeout = timeout
        #: The users subscribed, or to be subscribed again on the next connection.
        self.users: set[str] = set()
        # Waiters for the next connection, which subscribes every wanted user.
        self._waiters: dict[bytes, _Waiters] = {}
        self._lock = asyncio.Lock()
        #: The current connection, once :meth:`attach` gave it.
        self.link: Link | None = None

    def channel(self, user_id: str) -> bytes:
        return user_keys(user_id, self._db).channel.encode("ascii")

    async def subscribe(self, user_id: str) -> None:
        channel = self.channel(user_id)
        self.users.add(user_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._lock:
            link = self.link
            if link is not None and link.up:
                link.expect_confirmation(channel, [waiter])
                await link.send(SUBSCRIBE, channel)
            else:
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
        self.users.discard(user_id)
        async with self._lock:
            link = self.link
            if user_id in self.users or link is None or not link.up:
                return
            await link.send(UNSUBSCRIBE, self.channel(user_id))

    async def attach(self, link: Link) -> None:
        """Make ``link`` the current connection and subscribe every wanted user on
        it, in one write; the waiters queued meanwhile wait for its confirmations."""
        async with self._lock:
            channels = [self.channel(user_id) for user_id in self.users]
            for channel in channels:
                link.expect_confirmation(channel, self._waiters.pop(channel, []))
            link.initial.update(channels)
            self.link = link
            if channels:
                conn = link.conn
                commands = [(SUBSCRIBE, channel) for channel in channels]
                await conn.send_packed_command(conn.pack_commands(commands), False)

    async def send(self, link: Link, *args: str | bytes) -> bool:
        """Send on ``link`` if it is still the current connection; whether it was."""
        async with self._lock:
            if self.link is not link:
                return False
            await link.send(*args)
            return True

    def detach(self, link: Link) -> bool:
        """Hand the waiters of a dead connection to the next one; whether it was
        the current connection."""
        current = self.link is link
        if current:
            self.link = None
        for channel, queue in link.expect.items():
            for waiters in queue:
                pending = [waiter for waiter in waiters if not waiter.done()]
                if pending:
                    self._waiters.setdefault(channel, []).extend(pending)
        link.expect.clear()
        return current

    def cancel(self) -> None:
        """Fail every call still waiting for a connection (the subscriber closes)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
