"""Gap repair: reading a user's history again into streams that missed records.

A live record whose offset is not the next one a stream expects reveals a
hole (a lost pub/sub message, an outage: :meth:`~.connection.Connection.offer`
returns False), and a backend that had lost its connection may have dropped
records for everyone (:meth:`~.broker.Sink.resumed`).  Either asks for a
repair of the user.  One repair runs per user at a time; asked again while it
runs, it runs once more when done, so no request is lost and none doubles up.

A repair groups the user's open streams by position, reads the history after
each position once, and hands every stream of the group that read
(:meth:`~.connection.Connection.catch_up`), which applies only what is still
news to it.  While the backend is unavailable it retries with backoff, as
long as the user still has streams here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from .broker import Broker, Position
from .connection import Connection
from .errors import BackendUnavailable
from .logs import escape
from .metrics import Metrics

__all__ = ["FIRST_DELAY", "MAX_DELAY", "GapRepair"]

logger = logging.getLogger(__name__)

#: Seconds before the first retry while the backend is unavailable; doubled
#: on each failure, up to :data:`MAX_DELAY`.
FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class GapRepair:
    def __init__(
        self,
        broker: Broker,
        streams: Mapping[str, set[Connection]],
        revoked: Callable[[str, float], None],
        metrics: Metrics,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._broker = broker
        #: The hub's streams by user, read as they are at each step.
        self._streams = streams
        self._revoked = revoked
        self._metrics = metrics
        self._spawn = spawn
        self._sleep = sleep
        # Users being repaired: True once asked again while the repair runs.
        self._running: dict[str, bool] = {}

    def request(self, user_id: str) -> None:
        if user_id in self._running:
            self._running[user_id] = True
            return
        self._running[user_id] = False
        self._spawn(self._repair(user_id))

    async def _repair(self, user_id: str) -> None:
        delay = FIRST_DELAY
        try:
            while user_id in self._streams:
                self._running[user_id] = False
                try:
                    await self._replay_into_streams(user_id)
                except BackendUnavailable as exc:
                    logger.warning("catch-up for user %s postponed %.1fs: %s",
                                   escape(user_id), delay, exc.reason)
                    await self._sleep(delay)
                    delay = min(delay * 2, MAX_DELAY)
                    continue
                self._metrics.gap_repairs += 1
                if not self._running[user_id]:
                    return
        finally:
            del self._running[user_id]

    async def _replay_into_streams(self, user_id: str) -> None:
        groups: dict[Position | None, list[Connection]] = defaultdict(list)
        for conn in self._streams.get(user_id, ()):
            if not conn.opening and not conn.closed:
                groups[conn.position].append(conn)
        for position, group in groups.items():
            replay = await self._broker.replay(user_id, position)
            if replay.revoked_before is not None:
                # Covers a sign-out whose announcement this replica missed.
                self._revoked(user_id, replay.revoked_before)
            for conn in group:
                conn.catch_up(replay)
