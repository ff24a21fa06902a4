"""In-process broker: history in dictionaries, fan-out by direct call.

Serves one process.  Every epoch it hands out starts with a prefix drawn at
start-up, so after a restart every old id is answered with ``resync``, never
with a silent partial replay.

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

Revocations are kept apart from histories (forgetting a history must not
forget a sign-out), in a dict bounded by the users revoked within their TTL
and swept from a heap of their expiries by the same task.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .broker import Appended, Position, Record, Replay, Sink, new_epoch
from .errors import BackendUnavailable, ResyncReason

__all__ = ["MemoryBroker"]

logger = logging.getLogger(__name__)

#: A reader that comes back this soon (an EventSource retry, a token
#: refresh) keeps its position even when its user has no record left.
_GRACE_SECONDS = 10.0
#: Users forgotten between two yields to the event loop: a wave of expiries
#: must not stall the streams.
_SWEEP_BATCH = 256


@dataclass(slots=True)
class _History:
    epoch: str
    #: Forgettable ``_GRACE_SECONDS`` after this, unless subscribed.
    expires: float
    head: int = 0
    #: Whether the sweep heap holds an entry for this user.
    queued: bool = True
    # Allocated with the first record, dropped with the last: an empty deque
    # alone costs more than the rest of the history.
    records: deque[tuple[Record, float, str]] | None = None
    keys: dict[str, Record] | None = None


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
        self._users: dict[str, _History] = {}
        #: Most users held since ``_users`` was last rebuilt.
        self._peak = 0
        self._due: list[tuple[float, str]] = []
        self._subscribed: set[str] = set()
        self._sink: Sink | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeps = 0
        #: user -> (not_before, expires on ``clock``), and the expiries as a heap.
        self._revoked: dict[str, tuple[float, float]] = {}
        self._revoked_due: list[tuple[float, str]] = []

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
        now = self._clock()
        history = self._history(user_id, now)
        records, keys = history.records, history.keys
        if records is None or keys is None:
            records = history.records = deque()
            keys = history.keys = {}
        existing = keys.get(key)
        if existing is not None:
            return Appended(existing, duplicate=True)
        history.head += 1
        record = Record(user_id, history.epoch, history.head, data)
        records.append((record, now, key))
        keys[key] = record
        if len(records) > self._size:
            _, _, old_key = records.popleft()
            keys.pop(old_key, None)
        self._keep(user_id, history, now + self._ttl)
        if self._sink is not None and user_id in self._subscribed:
            self._sink.deliver(record)
        return Appended(record)

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        results: list[Appended | BackendUnavailable] = []
        for user_id, key, data in items:
            try:
                results.append(await self.append(user_id, key, data))
            except BackendUnavailable as exc:
                results.extend([exc] * (len(items) - len(results)))
                break
        return results

    async def replay(self, user_id: str, after: Position | None) -> Replay:
        now = self._clock()
        revoked = self._revoked.get(user_id)
        before = revoked[0] if revoked is not None and revoked[1] > now else None
        # Even a read creates the history: the head it returns must stay
        # valid for the reader's next visit.
        history = self._history(user_id, now)
        head = Position(history.epoch, history.head)
        if after is None:
            return Replay(head, revoked_before=before)
        if after.epoch != history.epoch:
            return Replay(head, resync=ResyncReason.UNKNOWN_EPOCH, revoked_before=before)
        if after.offset > history.head:
            return Replay(head, resync=ResyncReason.UNKNOWN_POSITION, revoked_before=before)
        records = history.records or ()
        first = records[0][0].offset if records else history.head + 1
        if after.offset < first - 1:
            return Replay(head, resync=ResyncReason.EXPIRED, revoked_before=before)
        skip = after.offset - first + 1
        return Replay(head, [entry[0] for entry in itertools.islice(records, skip, None)],
                      revoked_before=before)

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        now = self._clock()
        expires = now + ttl_seconds
        current = self._revoked.get(user_id)
        if current is not None and current[1] > now:
            not_before = max(not_before, current[0])
            expires = max(expires, current[1])
        self._revoked[user_id] = (not_before, expires)
        heapq.heappush(self._revoked_due, (expires, user_id))
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

    def _history(self, user_id: str, now: float) -> _History:
        history = self._users.get(user_id)
        if history is None:
            history = self._users[user_id] = _History(self.epoch, now)
            heapq.heappush(self._due, (now, user_id))
            self._peak = max(self._peak, len(self._users))
        else:
            self._trim(history, now)
            self._keep(user_id, history, now)
        return history

    def _keep(self, user_id: str, history: _History, until: float) -> None:
        """Keep the history at least until ``until`` (plus the grace)."""
        if until > history.expires:
            history.expires = until
        if not history.queued:
            history.queued = True
            heapq.heappush(self._due, (history.expires, user_id))

    def _trim(self, history: _History, now: float) -> None:
        records, keys = history.records, history.keys
        if records is None or keys is None:
            return
        cutoff = now - self._ttl
        while records and records[0][1] < cutoff:
            _, _, old_key = records.popleft()
            keys.pop(old_key, None)
        if not records:
            history.records = history.keys = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                while self._sweep_batch() | self._sweep_revocations():
                    await asyncio.sleep(0)
            except Exception:
                logger.exception("history sweep failed; trying again next tick")
            self._sweeps += 1

    def _sweep_revocations(self) -> bool:
        """Forget up to ``_SWEEP_BATCH`` lapsed revocations; ``True`` when more are due."""
        now = self._clock()
        due = self._revoked_due
        for _ in range(_SWEEP_BATCH):
            if not due or due[0][0] > now:
                return False
            expires, user_id = heapq.heappop(due)
            current = self._revoked.get(user_id)
            # A later revocation of the user pushed its own entry.
            if current is not None and current[1] <= expires:
                del self._revoked[user_id]
        return bool(due) and due[0][0] <= now

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
                self._trim(history, now)
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
