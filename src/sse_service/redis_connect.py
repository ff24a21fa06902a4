"""How the process connects to Redis, and which servers it accepts.

Two pools from ``SSE_REDIS_URL`` (``rediss://`` for TLS, user and password in
the URL): one for commands and scripts, bounded by ``SSE_REDIS_TIMEOUT_SECONDS``,
and one that makes the single pub/sub connection (:mod:`.redis_pubsub`).

Redis 7.0 or later is required: the scripts declare flags in a ``#!lua`` line
and fan-out is sharded pub/sub (:mod:`.redis_messages`).  :func:`unsupported`
is the one check of that; the pub/sub connection makes it on every connect and
readiness when a script does not even compile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

__all__ = ["MINIMUM_VERSION", "command_pool", "pubsub_pool", "unsupported"]

#: The oldest Redis major version served: sharded pub/sub and script flags.
MINIMUM_VERSION = 7
#: Concurrent Redis commands per process; more would only queue inside Redis.
_POOL_SIZE = 64


def unsupported(info: bytes | Mapping[str, Any]) -> str | None:
    """Why the server that answered ``INFO server`` with ``info`` cannot be used,
    or None.  ``info`` is the raw reply (as the pub/sub connection reads it) or
    the dictionary redis-py makes of it."""
    if isinstance(info, Mapping):
        version = str(info.get("redis_version", ""))
    else:
        version = _version_line(info)
    major = version.split(".")[0]
    if major.isdigit() and int(major) >= MINIMUM_VERSION:
        return None
    return f"Redis {version or '(unknown version)'} is not supported: 7.0 or later is required"


def _version_line(info: bytes) -> str:
    for line in info.splitlines():
        if line.startswith(b"redis_version:"):
            return line.partition(b":")[2].strip().decode("ascii", "replace")
    return ""


def command_pool(url: str, timeout: float) -> BlockingConnectionPool:
    """Connections for commands and scripts.

    RESP2 everywhere: any server version speaks it.  One immediate retry
    on a broken connection: pooled connections are stale after a Redis
    restart.  Timeouts are not retried, they would only double the wait; a
    retried append is safe, dedupe answers it.  Blocking: a burst of connects
    or deliveries waits (up to the timeout) for a free connection instead of
    failing with "too many connections", which would turn load into 503s and
    RETRYs.
    """
    return BlockingConnectionPool.from_url(
        url,
        max_connections=_POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        client_name="sse-service",
        protocol=2,
    )


def pubsub_pool(url: str, timeout: float) -> ConnectionPool:
    """What makes the pub/sub connection.  Its reads wait for pushes; the
    subscriber's PINGs every ``timeout`` keep them coming, so three silent
    periods mean a dead server.  RESP2, so pushes arrive as plain replies the
    subscriber reads itself; no retry, the subscriber reconnects on its own."""
    return ConnectionPool.from_url(
        url,
        socket_timeout=3 * timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name="sse-service-pubsub",
        protocol=2,
    )
