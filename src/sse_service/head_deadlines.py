"""One timer for every request head still being read.

A head deadline (``SSE_HEADER_TIMEOUT_SECONDS``) is armed when a connection
opens and again for each request on a kept-alive one, and almost always
disarmed microseconds later, when the head is complete.  A loop timer per
arming costs a handle, a timer-heap insert and a cancel each time, on every
stream connect and every delivery.  Here arming is a dict insert: one timer,
firing :data:`STEPS` times per timeout while anything is armed, expires the
heads that ran out of time, oldest first (every head has the same timeout,
so arming order is deadline order).

A head is cut between ``timeout`` and ``timeout * (1 + 1 / STEPS)`` after it
was armed: a deadline against slow clients, not a stopwatch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["STEPS", "HeadDeadlines", "HeadWatcher"]

logger = logging.getLogger(__name__)

#: Sweeps per timeout: how late past its deadline a head may be cut.
STEPS = 4


class HeadWatcher(Protocol):
    def head_timed_out(self) -> None:
        """The head armed for did not complete in time (it is disarmed already)."""


class HeadDeadlines:
    """The armed heads of one server's connections, by arming order."""

    __slots__ = ("timeout", "_step", "_armed", "_timer", "_loop")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._step = timeout / STEPS
        self._armed: dict[HeadWatcher, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, watcher: HeadWatcher, loop: asyncio.AbstractEventLoop) -> None:
        """Start (or restart) ``watcher``'s deadline."""
        armed = self._armed
        # Re-armed: to the end, so the dict stays in deadline order.
        armed.pop(watcher, None)
        armed[watcher] = loop.time() + self.timeout
        if self._timer is None or self._loop is not loop:
            self._schedule(loop)

    def disarm(self, watcher: HeadWatcher) -> None:
        self._armed.pop(watcher, None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop = loop
        self._timer = loop.call_later(self._step, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        armed = self._armed
        now = loop.time()
        expired: list[HeadWatcher] = []
        for watcher, deadline in armed.items():
            if deadline > now:
                break
            expired.append(watcher)
        for watcher in expired:
            del armed[watcher]
        # Disarmed before the calls: a watcher may arm itself again.
        for watcher in expired:
            try:
                watcher.head_timed_out()
            except Exception:
                # One connection's failure must not end the deadlines of the rest.
                logger.exception("expiring a request head failed")
        if armed and self._timer is None:
            self._schedule(loop)
