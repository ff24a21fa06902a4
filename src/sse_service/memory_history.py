"""One user's history in process memory: records, dedupe keys, trimming, replay.

The memory broker (:mod:`.broker_memory`) holds one :class:`History` per user
it knows and decides when to forget it; this module is what a history holds
and answers.  Records are kept in offset order with the time they were
stored, at most ``size`` of them (the oldest goes first) and none older than
the TTL (:meth:`History.trim`).  A dedupe key lives exactly as long as its
record, so a trimmed record's key can be stored again.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from .broker import Appended, Position, Record, Replay
from .errors import ResyncReason

__all__ = ["History"]


@dataclass(slots=True)
class History:
    epoch: str
    #: Forgettable a grace period after this, unless subscribed (the broker's).
    expires: float
    head: int = 0
    #: Whether the broker's sweep heap holds an entry for this user.
    queued: bool = True
    # Allocated with the first record, dropped with the last: an empty deque
    # alone costs more than the rest of the history.
    records: deque[tuple[Record, float, str]] | None = None
    keys: dict[str, Record] | None = None

    def add(self, user_id: str, key: str, data: bytes, now: float, size: int) -> Appended:
        """Store ``data`` at the next offset, unless ``key`` is stored already."""
        records, keys = self.records, self.keys
        if records is None or keys is None:
            records = self.records = deque()
            keys = self.keys = {}
        existing = keys.get(key)
        if existing is not None:
            return Appended(existing, duplicate=True)
        self.head += 1
        # tuple.__new__: a NamedTuple's own __new__ is a Python function, a frame per call.
        record = tuple.__new__(Record, (user_id, self.epoch, self.head, data))
        records.append((record, now, key))
        keys[key] = record
        if len(records) > size:
            _, _, old_key = records.popleft()
            keys.pop(old_key, None)
        return tuple.__new__(Appended, (record, False))

    def trim(self, cutoff: float) -> None:
        """Drop the records stored before ``cutoff``, and their dedupe keys."""
        records, keys = self.records, self.keys
        if records is None or keys is None:
            return
        while records and records[0][1] < cutoff:
            _, _, old_key = records.popleft()
            keys.pop(old_key, None)
        if not records:
            self.records = self.keys = None

    def replay(self, after: Position | None, revoked_before: float | None) -> Replay:
        """The records after ``after``, or why they cannot be given (see
        :meth:`.broker.Broker.replay`); the history is trimmed already."""
        head = Position(self.epoch, self.head)
        if after is None:
            return Replay(head, [], revoked_before=revoked_before)
        if after.epoch != self.epoch:
            return Replay(head, [], resync=ResyncReason.UNKNOWN_EPOCH,
                          revoked_before=revoked_before)
        if after.offset > self.head:
            return Replay(head, [], resync=ResyncReason.UNKNOWN_POSITION,
                          revoked_before=revoked_before)
        records = self.records or ()
        first = records[0][0].offset if records else self.head + 1
        if after.offset < first - 1:
            return Replay(head, [], resync=ResyncReason.EXPIRED, revoked_before=revoked_before)
        skip = after.offset - first + 1
        return Replay(head, [entry[0] for entry in itertools.islice(records, skip, None)],
                      revoked_before=revoked_before)
