"""Redis broker: history, dedupe and fan-out shared by every replica.

History and dedupe live in per-user keys (:mod:`.redis_keys`) written and
read only by the Lua scripts in :mod:`.redis_scripts`, so ids mean the same
on every replica.  Fan-out is Redis pub/sub over the process's single
subscriber connection (:mod:`.redis_pubsub`); sign-outs are
:mod:`.redis_revocations`.  The connections are made as :mod:`.redis_connect`
says, from ``SSE_REDIS_URL``.

Every call is bounded by ``SSE_REDIS_TIMEOUT_SECONDS``: a dead or hung server
turns into :class:`~sse_service.errors.BackendUnavailable` within about that
long, so a Dapr delivery is answered RETRY instead of hanging.  So does a
server out of memory: appends are refused before they run, and
:meth:`RedisBroker.ping` (``/readyz``) names the reason.

Redis 7.0 or later is required (script flags, sharded pub/sub); an older
server makes ``ping`` fail with that reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.typing import EncodableT

from .broker import Appended, Position, Record, Replay, Sink, new_epoch
from .config import Settings
from .errors import BackendUnavailable
from .metrics import Metrics, Operation
from .redis_connect import command_pool, pubsub_pool, unsupported
from .redis_keys import user_keys
from .redis_pubsub import Subscriber
from .redis_revocations import RedisRevocations
from .redis_scripts import APPEND, PROBE, REPLAY

__all__ = ["RedisBroker"]

#: Key lifetimes beyond the history TTL.  The log outlives its newest entry
#: by a second so key expiry never beats age trimming; the epoch outlives the
#: log by a whole TTL so an aged-out reader hears "expired", not a new epoch.
_LOG_GRACE_MS = 1_000
_META_GRACE_MS = 60_000
#: How long a refused append keeps ``ping`` reporting a full Redis.  Redis is
#: below its limit again between two deliveries (their buffers count), but
#: daprd redelivers a refused message every 5 s: under lasting pressure a
#: refusal is never older than that.  An append that succeeds clears it.
_FULL_HOLD_SECONDS = 15.0
_OUT_OF_MEMORY = (
    "Redis is out of memory (used_memory above maxmemory): appends are refused "
    "and deliveries answered RETRY until memory is freed"
)


class RedisBroker:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._errors = (metrics or Metrics()).backend_errors
        url = settings.redis_url.get_secret_value()
        timeout = settings.redis_timeout_seconds
        self._where = settings.redis_url_for_logs
        self._size = settings.history_size
        self._ttl_ms = settings.history_ttl_seconds * 1000
        self._log_ttl_ms = self._ttl_ms + _LOG_GRACE_MS
        self._meta_ttl_ms = 2 * self._ttl_ms + _META_GRACE_MS
        self._timeout = timeout
        # A script call may take three round trips (EVALSHA, SCRIPT LOAD, EVALSHA).
        self._deadline = 3 * timeout
        self._redis = Redis(connection_pool=command_pool(url, timeout))
        self._db = int(self._redis.connection_pool.connection_kwargs.get("db") or 0)
        self._append = self._redis.register_script(APPEND)
        self._replay = self._redis.register_script(REPLAY)
        self._probe = self._redis.register_script(PROBE)
        self._revocations = RedisRevocations(self._redis, self._db, self._call)
        self._subscriber = Subscriber(pubsub_pool(url, timeout), self._db, timeout, self._where,
                                      self._errors)
        self._started = False
        #: Loop time of the newest append refused for memory, until one succeeds.
        self._refused_at: float | None = None

    async def start(self, sink: Sink) -> None:
        def resumed() -> None:
            sink.resumed()
            # Sign-outs announced while the connection was down were not heard.
            self._revocations.read_again(self._subscriber.wanted, sink)

        # Looked up when a sign-out arrives, not now: a sink that never sees
        # one need not implement it.
        self._subscriber.start(sink.deliver, resumed,
                               lambda user_id, not_before: sink.revoked(user_id, not_before))
        self._started = True

    async def close(self) -> None:
        self._started = False
        await self._revocations.close()
        await self._subscriber.close()
        await self._redis.aclose()

    async def append(self, user_id: str, key: str, data: bytes) -> Appended:
        keys = user_keys(user_id, self._db)
        reply = await self._call(
            self._append(keys=keys.keys, args=self._append_args(keys.channel, key, data)),
            Operation.APPEND,
        )
        self._refused_at = None
        return _appended(user_id, data, reply)

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        if len(items) == 1:
            try:
                return [await self.append(*items[0])]
            except BackendUnavailable as exc:
                return [exc]
        # One pipeline: one round trip and one write for a whole bulk delivery.
        # Redis runs the scripts in the order sent, so per-user order holds.
        pipe = self._redis.pipeline(transaction=False)
        for user_id, key, data in items:
            keys = user_keys(user_id, self._db)
            args = self._append_args(keys.channel, key, data)
            await self._append(keys=keys.keys, args=args, client=pipe)
        try:
            replies = await self._call(pipe.execute(raise_on_error=False), Operation.APPEND)
        except BackendUnavailable as exc:
            return [exc] * len(items)
        results: list[Appended | BackendUnavailable] = []
        failed: BackendUnavailable | None = None
        for (user_id, _, data), reply in zip(items, replies, strict=True):
            if failed is None and isinstance(reply, Exception):
                self._errors[Operation.APPEND] += 1
                self._refused(reply)
                failed = _unavailable(reply, "Redis refused an append")
            elif failed is None:
                self._refused_at = None
            results.append(failed or _appended(user_id, data, reply))
        return results

    def _append_args(self, channel: str, key: str, data: bytes) -> list[EncodableT]:
        return [
            new_epoch(), key, data, self._size, self._ttl_ms, self._log_ttl_ms,
            self._meta_ttl_ms, channel,
        ]

    async def replay(self, user_id: str, after: Position | None) -> Replay:
        keys = user_keys(user_id, self._db)
        args: list[EncodableT] = [
            new_epoch(), after.epoch if after else "", after.offset if after else 0,
            self._ttl_ms, self._meta_ttl_ms,
        ]
        reply = await self._call(self._replay(keys=[*keys.keys, keys.revoked], args=args),
                                 Operation.REPLAY)
        epoch = _text(reply[0])
        head = Position(epoch, int(reply[1]))
        resync = _text(reply[2]) or None
        revoked = _text(reply[3])
        before = float(revoked) if revoked else None
        if resync is not None:
            return Replay(head, [], resync=resync, revoked_before=before)
        records = [
            Record(user_id, epoch, int(bytes(reply[i]).partition(b"-")[0]), bytes(reply[i + 1]))
            for i in range(4, len(reply), 2)
        ]
        return Replay(head, records, revoked_before=before)

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        await self._revocations.revoke(user_id, not_before, ttl_seconds)

    async def subscribe(self, user_id: str) -> None:
        try:
            await self._subscriber.subscribe(user_id)
        except BackendUnavailable:
            self._errors[Operation.SUBSCRIBE] += 1
            raise

    async def unsubscribe(self, user_id: str) -> None:
        await self._subscriber.unsubscribe(user_id)

    @property
    def pubsub_connected(self) -> bool:
        """The pub/sub connection is up with every subscription confirmed."""
        return self._subscriber.connected

    async def ping(self) -> None:
        """Ready when Redis would run an append now (it answers, is a writable
        primary, is below ``maxmemory``), refused none for memory lately, and the
        pub/sub connection is up."""
        try:
            await self._call(self._probe(), Operation.PING)
        except BackendUnavailable as exc:
            refusal = exc.__cause__
            if isinstance(refusal, ResponseError) and not isinstance(refusal, OutOfMemoryError):
                # Before Redis 7 a script with flags does not even compile.
                info = await self._call(self._redis.info("server"), Operation.PING)
                reason = unsupported(info)
                if reason is not None:
                    raise BackendUnavailable(reason) from exc
            raise
        refused = self._refused_at
        if refused is not None and asyncio.get_running_loop().time() - refused < _FULL_HOLD_SECONDS:
            raise BackendUnavailable(_OUT_OF_MEMORY)
        # Right after start or during a reconnect, give the subscriber a moment.
        if self._started and not await self._subscriber.wait_connected(self._timeout):
            raise BackendUnavailable(
                self._subscriber.unsupported or "Redis pub/sub connection is down; reconnecting"
            )

    async def _call(self, call: Awaitable[Any], operation: Operation) -> Any:
        try:
            async with asyncio.timeout(self._deadline):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            self._errors[operation] += 1
            self._refused(exc)
            raise _unavailable(exc, "Redis unavailable") from exc

    def _refused(self, exc: BaseException) -> None:
        if isinstance(exc, OutOfMemoryError):
            self._refused_at = asyncio.get_running_loop().time()


def _unavailable(exc: BaseException, what: str) -> BackendUnavailable:
    if isinstance(exc, OutOfMemoryError):
        return BackendUnavailable(_OUT_OF_MEMORY)
    return BackendUnavailable(f"{what} ({type(exc).__name__}: {exc})")


def _appended(user_id: str, data: bytes, reply: Any) -> Appended:
    epoch, offset, duplicate = _text(reply[0]), int(reply[1]), bool(int(reply[2]))
    stored = bytes(reply[3]) if duplicate else data
    return Appended(Record(user_id, epoch, offset, stored), duplicate=duplicate)


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
