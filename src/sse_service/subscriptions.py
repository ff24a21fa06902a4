"""Each user's broker subscription, held while the user has streams here.

The first stream of a user subscribes (:meth:`~.broker.Broker.subscribe`
returns once the user's new records will reach the hub); streams of the same
user opening meanwhile wait for that one subscription rather than making
their own, and share its failure.  The last stream to close unsubscribes.
A failed or cancelled subscription is forgotten, so the next stream tries
again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .broker import Broker

__all__ = ["Subscriptions"]


class Subscriptions:
    def __init__(self, broker: Broker,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._broker = broker
        self._spawn = spawn
        # Per user with streams here: True once subscribed, else the subscription
        # in progress, which other streams of the user opening meanwhile share.
        self._state: dict[str, asyncio.Future[None] | bool] = {}

    async def ensure(self, user_id: str) -> None:
        """Return once the user is subscribed; raise what the broker raised."""
        state = self._state.get(user_id)
        if state is True:
            return
        if isinstance(state, asyncio.Future):
            await asyncio.shield(state)
            return
        # The first stream of the user subscribes inline, with no task of its
        # own: most subscriptions finish at once, and a connect is hot.
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state[user_id] = pending
        try:
            await self._broker.subscribe(user_id)
        except BaseException as exc:
            if self._state.get(user_id) is pending:
                del self._state[user_id]
            if isinstance(exc, Exception):
                pending.set_exception(exc)
                pending.exception()  # the waiters, if any, re-raise it
            else:
                pending.cancel()
            raise
        if self._state.get(user_id) is pending:
            self._state[user_id] = True
        pending.set_result(None)

    def drop(self, user_id: str) -> None:
        """The user's last stream here closed."""
        self._state.pop(user_id, None)
        self._spawn(self._broker.unsubscribe(user_id))
