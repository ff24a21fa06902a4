"""In-process broker: the users' histories in a dictionary, fan-out by direct call.

Serves one process.  What one history holds and answers is
:mod:`.memory_history`; this module decides which users are held.  Every
epoch it hands out starts with a prefix drawn at start-up, so after a restart
every old id is answered with ``resync``, never with a silent partial replay.

Memory is bounded by the users active within the TTL.  A user's history
holds at most ``history_size`` records, none kept past the TTL, and a user
with no retained record and no subscription is forgotten entirely about ten
seconds (``_GRACE_SECONDS``) after its newest record aged out, or after its
last read or unsubscribe.  A sweeper task, started by
:meth:`MemoryBroker.start` and stopped by :meth:`MemoryBroker.close`, keeps
the users in a heap ordered by when they fall due, so a tick touches only
the users that are due, never all of them.  Whenever a sweep forgets
someone, the epoch given to new histories moves on (prefix plus a
generation count): a forgotten user's next history never reuses an id, and
an id from the forgotten one is answered with ``resync`` (``unknown_epoch``).

Sign-outs are kept apart from histories (:mod:`.memory_revocations`), swept
by the same task.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence

from .broker import Appended, Position, Record, Replay, Sink, new_epoch
from .errors import BackendUnavailable
from .memory_history import History
from .memory_revocations import MemoryRevocations

__all__ = ["MemoryBroker"]

logger = logging.getLogger(__name__)

#: A reader that comes back this soon (an EventSource retry, a token
#: refresh) keeps its position even when its user has no record left.
_GRACE_SECONDS = 10.0
#: Users forgotten between two yields to the event loop: a wave of expiries
#: must not stall the streams.
_SWEEP_BATCH = 256


class MemoryBroker:
    def __init__(
        self,
        history_size: int,
        history_ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval_seconds: float = 1.0,
    ) -> None:
        self._base_epoch = new_epoch()
        self._generation = 0
        #: The epoch new histories get.
        self.epoch = self._epoch_of(0)
        self._size = history_size
        self._ttl = history_ttl_seconds
        self._clock = clock
        self._sweep_interval = sweep_interval_seconds
        self._users: dict[str, History] = {}
        #: Most users held since ``_users`` was last rebuilt.
        self._peak = 0
        self._due: list[tuple[float, str]] = []
        self._subscribed: set[str] = set()
        self._sink: Sink | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeps = 0
        self._revoked = MemoryRevocations(clock, _SWEEP_BATCH)

    @property
    def users(self) -> int:
        """Users whose history is held in memory."""
        return len(self._users)

    @property
    def sweeps(self) -> int:
        """Completed sweeps; each forgets every user that was due when it began."""
        return self._sweeps

    async def start(self, sink: Sink) -> None:
        self._sink = sink
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="memory-broker-sweeper"
            )

    async def close(self) -> None:
        self._sink = None
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    async def append(self, user_id: str, key: str, data: bytes) -> Appended:
        appended = self._store(user_id, key, data, self._clock())
        if not appended.duplicate:
            self._deliver(appended.record)
        return appended

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        # Stored first, then delivered: the batch's writes to the streams go out
        # back to back, and a reader woken by the first finds the rest waiting.
        now = self._clock()
        results: list[Appended | BackendUnavailable] = [
            self._store(user_id, key, data, now) for user_id, key, data in items]
        sink, subscribed = self._sink, self._subscribed
        if sink is not None:
            for appended in results:
                if (isinstance(appended, Appended) and not appended.duplicate
                        and appended.record.user_id in subscribed):
                    sink.deliver(appended.record)
        return results

    async def replay(self, user_id: str, after: Position | None) -> Replay:
        now = self._clock()
        before = self._revoked.before(user_id, now)
        # Even a read creates the history: the head it returns must stay
        # valid for the reader's next visit.
        return self._history(user_id, now).replay(after, before)

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        not_before = self._revoked.revoke(user_id, not_before, ttl_seconds)
        if self._sink is not None and user_id in self._subscribed:
            self._sink.revoked(user_id, not_before)

    async def subscribe(self, user_id: str) -> None:
        """Appends reach the sink directly, from now on."""
        self._subscribed.add(user_id)

    async def unsubscribe(self, user_id: str) -> None:
        self._subscribed.discard(user_id)
        history = self._users.get(user_id)
        if history is not None:
            self._keep(user_id, history, self._clock())

    async def ping(self) -> None:
        """Always available."""

    # -- internals -------------------------------------------------------------
    def _epoch_of(self, generation: int) -> str:
        return f"{self._base_epoch}g{generation:x}"

    def _store(self, user_id: str, key: str, data: bytes, now: float) -> Appended:
        history = self._users.get(user_id)
        if history is None:
            history = self._history(user_id, now)
        else:
            # What _history does, but for the keep: a stored record keeps it longer.
            history.trim(now - self._ttl)
        appended = history.add(user_id, key, data, now, self._size)
        if not appended.duplicate:
            self._keep(user_id, history, now + self._ttl)
        return appended

    def _deliver(self, record: Record) -> None:
        if self._sink is not None and record.user_id in self._subscribed:
            self._sink.deliver(record)

    def _history(self, user_id: str, now: float) -> History:
        history = self._users.get(user_id)
        if history is None:
            history = self._users[user_id] = History(self.epoch, now)
            heapq.heappush(self._due, (now, user_id))
            self._peak = max(self._peak, len(self._users))
        else:
            history.trim(now - self._ttl)
            self._keep(user_id, history, now)
        return history

    def _keep(self, user_id: str, history: History, until: float) -> None:
        """Keep the history at least until ``until`` (plus the grace)."""
        if until > history.expires:
            history.expires = until
        if not history.queued:
            history.queued = True
            heapq.heappush(self._due, (history.expires, user_id))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                while self._sweep_batch() | self._revoked.sweep():
                    await asyncio.sleep(0)
            except Exception:
                logger.exception("history sweep failed; trying again next tick")
            self._sweeps += 1

    def _sweep_batch(self) -> bool:
        """Forget up to ``_SWEEP_BATCH`` due users; ``True`` when more are due."""
        now = self._clock()
        due = now - _GRACE_SECONDS
        forgot = False
        for _ in range(_SWEEP_BATCH):
            if not self._due or self._due[0][0] > due:
                break
            _, user_id = heapq.heappop(self._due)
            history = self._users.get(user_id)
            if history is None:
                continue
            if history.expires > due:
                # Written or read since it was queued: look again when that is due.
                heapq.heappush(self._due, (history.expires, user_id))
            elif user_id in self._subscribed:
                # Its readers keep epoch and head; the records can go.
                # Unsubscribing queues it again.
                history.trim(now - self._ttl)
                history.queued = False
            else:
                del self._users[user_id]
                forgot = True
        if forgot:
            # A history created from now on must not reuse a forgotten epoch.
            self._generation += 1
            self.epoch = self._epoch_of(self._generation)
            if len(self._users) < self._peak // 4:
                # A dict never shrinks on deletion: copy it once it is mostly
                # empty (amortised by the deletions that emptied it).
                self._users = dict(self._users)
                self._peak = len(self._users)
        return bool(self._due) and self._due[0][0] <= due
