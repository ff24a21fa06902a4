"""Sign-outs on Redis: stored and announced by one script, read again after a reconnect.

``revoke`` runs ``REVOKE`` (:mod:`.redis_scripts`): it keeps the user's latest
``not_before`` in ``sse:{u:<id>}:revoked`` (:mod:`.redis_keys`) for the TTL and
announces the value kept on the user's channel (:mod:`.redis_messages`), in one
step.  Every replay returns the stored value, so a stream opening later learns
it in the read it makes anyway.

A message published while the pub/sub connection was down is never heard.
So once the connection is back, :meth:`RedisRevocations.read_again` reads the
stored sign-outs of every subscribed user, a pipeline per thousand users, and
tells the sink each one found; telling it twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT

from .broker import Sink
from .errors import BackendUnavailable
from .metrics import Operation
from .redis_keys import user_keys
from .redis_scripts import REVOKE

__all__ = ["Call", "RedisRevocations"]

logger = logging.getLogger(__name__)

#: A Redis call bounded in time, its failure counted under the operation.
Call = Callable[[Awaitable[Any], Operation], Awaitable[Any]]
#: Users whose sign-outs one pipeline reads after a pub/sub reconnect.
_BATCH = 1_000


class RedisRevocations:
    def __init__(self, redis: Redis, db: int, call: Call) -> None:
        self._redis = redis
        self._db = db
        self._call = call
        self._script = redis.register_script(REVOKE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        keys = user_keys(user_id, self._db)
        args: list[EncodableT] = [repr(float(not_before)), int(ttl_seconds * 1000), keys.channel]
        await self._call(self._script(keys=[keys.revoked], args=args), Operation.REVOKE)

    def read_again(self, users: list[str], sink: Sink) -> None:
        """Read, in the background, the stored sign-outs of ``users`` and tell ``sink``."""
        task = asyncio.get_running_loop().create_task(self._read(users, sink))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self, users: list[str], sink: Sink) -> None:
        for start in range(0, len(users), _BATCH):
            batch = users[start:start + _BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for user_id in batch:
                pipe.get(user_keys(user_id, self._db).revoked)
            try:
                values = await self._call(pipe.execute(), Operation.REVOKE)
            except BackendUnavailable as exc:
                logger.warning("cannot read sign-outs after the pub/sub reconnect: %s",
                               exc.reason)
                return
            for user_id, value in zip(batch, values, strict=True):
                if value:
                    sink.revoked(user_id, float(value))
