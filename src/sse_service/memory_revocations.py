"""Sign-outs kept in process memory, for the memory broker.

Kept apart from the histories: forgetting an idle user's history must not
forget the user's sign-out.  Memory is bounded by the users revoked within
their TTL: a heap orders the sign-outs by expiry, and the broker's sweeper
calls :meth:`MemoryRevocations.sweep`, which touches only those due.

Like the Redis ``REVOKE`` script, a second sign-out of a user keeps the later
``not_before`` and the later expiry, so a redelivered or older one never
shortens the one in force.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

__all__ = ["MemoryRevocations"]


class MemoryRevocations:
    """``clock`` is the broker's monotonic clock, in seconds."""

    def __init__(self, clock: Callable[[], float], batch: int) -> None:
        self._clock = clock
        self._batch = batch
        #: user -> (not_before, expires on ``clock``).
        self._kept: dict[str, tuple[float, float]] = {}
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Sign-outs held, lapsed ones not swept yet included."""
        return len(self._kept)

    def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> float:
        """Keep the sign-out for ``ttl_seconds``; the ``not_before`` now in force."""
        now = self._clock()
        expires = now + ttl_seconds
        current = self._kept.get(user_id)
        if current is not None and current[1] > now:
            not_before = max(not_before, current[0])
            expires = max(expires, current[1])
        self._kept[user_id] = (not_before, expires)
        heapq.heappush(self._due, (expires, user_id))
        return not_before

    def before(self, user_id: str, now: float) -> float | None:
        """The ``not_before`` in force for the user at ``now``, if any."""
        kept = self._kept.get(user_id)
        return kept[0] if kept is not None and kept[1] > now else None

    def sweep(self) -> bool:
        """Forget up to ``batch`` lapsed sign-outs; ``True`` when more are due."""
        now = self._clock()
        due = self._due
        for _ in range(self._batch):
            if not due or due[0][0] > now:
                return False
            expires, user_id = heapq.heappop(due)
            current = self._kept.get(user_id)
            # A later revocation of the user pushed its own entry.
            if current is not None and current[1] <= expires:
                del self._kept[user_id]
        return bool(due) and due[0][0] <= now
