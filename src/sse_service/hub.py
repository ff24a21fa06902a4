"""The hub: this process's open streams, grouped by user.

It is the broker's :class:`~sse_service.broker.Sink`: each record is encoded
to bytes once and the same bytes are offered to every stream of its user.
One ticker serves every stream (keepalives, token expiry), so an idle stream
costs no timer of its own.  Connection limits, the connect-rate admission
(:mod:`.admission`) and the shutdown drain live here too; filling the holes
live records reveal is :mod:`.repair`'s.

Time is ``clock()`` (the loop's by default; :meth:`Hub.open`'s deadlines are on
it) and waits are ``sleep``, so that a test can drive both.

A stream holds a slot (``count``, what the limits and ``/readyz`` see) from
:meth:`Hub.open` until it is closed for any reason, and a socket
(``sockets``) until its writer is done (:meth:`Hub.close`).  A stream cut
while its client is stalled frees its slot at once, whatever its writer is
waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .admission import Admission
from .broker import Broker, Position, Record
from .config import Settings
from .connection import Connection
from .errors import AuthError, CapacityError, CloseReason, UserLimitError
from .frames import record_frame
from .logs import escape
from .metrics import REPLAYED, Metrics, Refusal
from .outlet import FLUSH_SECONDS, chunk
from .repair import GapRepair
from .socket_outlet import SocketWrites
from .subscriptions import Subscriptions

__all__ = ["Hub"]

logger = logging.getLogger(__name__)


class Hub:
    def __init__(self, broker: Broker, settings: Settings, metrics: Metrics | None = None, *,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._broker = broker
        self.metrics = metrics or Metrics()
        self.clock = clock or self._loop_time
        self._sleep = sleep
        self._keepalive = settings.keepalive_seconds
        self._period = min(1.0, self._keepalive / 4)
        self._queue_size = settings.queue_size
        self.queue_bytes = settings.queue_bytes
        #: Where the socket outlets' frames wait for the end of the loop turn.
        self.socket_writes = SocketWrites()
        self._max_total = settings.max_connections
        self._max_per_user = settings.max_connections_per_user
        # Built outside a loop, so on its own clock unless one is given.
        self.admission = Admission(settings.max_connect_rate, clock or time.monotonic)
        self._users: dict[str, set[Connection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions = Subscriptions(broker, self._spawn)
        self._repair = GapRepair(broker, self._users, self.revoked, self.metrics, self._spawn,
                                 sleep)
        self._ticker: asyncio.Task[None] | None = None
        self.count = 0
        self.sockets = 0
        self.draining = False

    @property
    def users(self) -> int:
        """Users with at least one stream here."""
        return len(self._users)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_forever(), name="sse-hub-ticker")

    async def stop(self) -> None:
        for conn in [conn for conns in self._users.values() for conn in conns]:
            conn.close(CloseReason.SERVER_SHUTDOWN)
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, window: float) -> None:
        """Refuse new streams and close open ones spread over ``window`` seconds,
        so their clients do not all reconnect to the other replicas at once."""
        self.draining = True
        conns = [conn for conns in self._users.values() for conn in conns]
        batches = max(1, min(len(conns), int(window * 20)))
        for index in range(batches):
            for conn in conns[index::batches]:
                conn.close(CloseReason.SERVER_SHUTDOWN)
            if index + 1 < batches:
                await self._sleep(window / batches)
        # The last batch gets its flush time; a stalled client is aborted by then.
        deadline = self.clock() + FLUSH_SECONDS + 0.5
        while self.sockets and self.clock() < deadline:
            await self._sleep(0.05)
        logger.info("drained: %d sockets still open", self.sockets)

    # -- streams ---------------------------------------------------------------
    async def open(
        self, user_id: str, deadline: float | None, after: Position | None, resync: str | None,
        issued_at: float | None = None,
    ) -> Connection:
        """Register a stream, then queue its replay (or resync) ahead of live events.

        A token issued before the user's sign-out (``issued_at`` ``None`` counts
        as before) is refused: the replay names the sign-out, and one announced
        while the replay was read has closed the stream already."""
        metrics = self.metrics
        if self.draining:
            metrics.refused[Refusal.DRAINING] += 1
            raise CapacityError("server is shutting down", retry_after=1)
        if self.count >= self._max_total:
            metrics.refused[Refusal.CAPACITY] += 1
            raise CapacityError("too many connections on this server")
        conns = self._users.get(user_id)
        if conns is not None and len(conns) >= self._max_per_user:
            metrics.refused[Refusal.USER_LIMIT] += 1
            raise UserLimitError(f"more than {self._max_per_user} streams for this user")
        # Last of the checks, so a stream refused for another reason spends no token.
        try:
            self.admission.check()
        except CapacityError:
            metrics.refused[Refusal.RATE_LIMITED] += 1
            raise
        conn = Connection(
            user_id, deadline, self._queue_size, self.clock(), byte_limit=self.queue_bytes,
            on_close=self._release, issued_at=issued_at, after=after,
        )
        self._users.setdefault(user_id, set()).add(conn)
        self.count += 1
        self.sockets += 1
        try:
            await self._subscriptions.ensure(user_id)
            replay = await self._broker.replay(user_id, after)
        except BaseException:
            self.close(conn)
            raise
        before = replay.revoked_before
        if conn.reason is CloseReason.REVOKED or (
                before is not None and (issued_at is None or issued_at < before)):
            self.close(conn)
            raise AuthError("token revoked")
        # Closed while it opened (a drain): its slot went uncounted then.
        closed_early = conn.reason
        if not conn.start(replay, resync):
            self._repair.request(user_id)
        metrics.streams_opened += 1
        if closed_early is not None:
            metrics.closed[closed_early] += 1
        if after is not None or resync is not None:
            metrics.resumed(resync or replay.resync or REPLAYED)
        return conn

    def close(self, conn: Connection) -> None:
        """The stream's writer is done (called once per :meth:`open`)."""
        conn.close(CloseReason.CLOSED)
        self.sockets -= 1

    def _release(self, conn: Connection) -> None:
        """Free the slot of a stream that was closed, for any reason."""
        conns = self._users.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        self.count -= 1
        # A stream refused while it opened was never counted as opened.
        if not conn.opening and conn.reason is not None:
            self.metrics.closed[conn.reason] += 1
        if not conns:
            del self._users[conn.user_id]
            self._subscriptions.drop(conn.user_id)

    # -- Sink ------------------------------------------------------------------
    def deliver(self, record: Record) -> None:
        conns = self._users.get(record.user_id)
        if not conns:
            return
        frame = record_frame(record)
        framed = chunk(frame)
        # Once per event, not per stream: the budget is per delivery.
        reached = len(conns)
        metrics = self.metrics
        metrics.queued_frames += reached
        metrics.queued_bytes += reached * len(frame)
        complete = True
        # A copy: a stream cut as a slow consumer leaves the set at once.
        for conn in tuple(conns):
            complete = conn.offer(record, frame, framed) and complete
        if not complete:
            self._repair.request(record.user_id)

    def resumed(self) -> None:
        for user_id in list(self._users):
            self._repair.request(user_id)

    def revoked(self, user_id: str, not_before: float) -> None:
        """Sign-out: end the user's streams whose token was issued before ``not_before``."""
        conns = self._users.get(user_id)
        if not conns:
            return
        # A copy: closing a stream releases its slot, leaving the set at once.
        ended = [conn for conn in tuple(conns)
                 if conn.issued_at is None or conn.issued_at < not_before]
        for conn in ended:
            conn.close(CloseReason.REVOKED)
        logger.info("sign-out of user %s: %d of %d streams ended", escape(user_id),
                    len(ended), len(conns) + len(ended),
                    extra={"reason": CloseReason.REVOKED, "user_id": escape(user_id)})

    # -- internals -------------------------------------------------------------
    def _loop_time(self) -> float:
        # The first call, in the loop the hub serves: from then on, the
        # loop's own clock, with no lookup of the running loop per call.
        self.clock = asyncio.get_running_loop().time
        return self.clock()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tick(self) -> None:
        """One turn of the ticker, as of ``clock()``: end the streams whose token
        expired, and send a keepalive to those idle for ``SSE_KEEPALIVE_SECONDS``."""
        now = self.clock()
        # Half a period early rather than up to a period late: ticks fall anywhere.
        idle = self._keepalive - self._period / 2
        for conns in list(self._users.values()):
            for conn in tuple(conns):
                if conn.deadline is not None and now >= conn.deadline:
                    conn.close(CloseReason.TOKEN_EXPIRED)
                elif conn.active:
                    conn.active = False
                    conn.idle_since = now
                elif now - conn.idle_since >= idle:
                    conn.keepalive()
                    conn.active = False
                    conn.idle_since = now

    async def _tick_forever(self) -> None:
        while True:
            await self._sleep(self._period)
            self.tick()
