"""The broker contract: per-user history and fan-out, shared by every backend.

A broker keeps, for each user, an ordered history of encoded events and
tells the local :class:`Sink` (the hub) about new ones.  The memory backend
serves one process; the Redis backend shares history and fan-out between
replicas.  Both pass ``tests/test_broker.py``.

Positions
    Every stored event has a :class:`Position` ``(epoch, offset)``.  Offsets
    of one user are 1, 2, 3, ... with no holes, in the order the events were
    appended.  The epoch names one incarnation of the user's history: it
    changes when that history is lost (a memory backend restarts or forgets an
    idle user's expired history, Redis comes back empty, restarts or lets the
    user's keys expire), so an old position can never be misread against new events.
    ``str(position)`` is the SSE ``id`` clients echo in ``Last-Event-ID``.

Ordering
    :meth:`Broker.append` calls for one user are totally ordered; the sink
    receives one user's records in offset order per process, and
    :meth:`Broker.replay` returns them in offset order.  Nothing is ordered
    across users.

Atomicity
    ``append`` stores the event, records its dedupe key and publishes it to
    every replica as one step: any record a sink receives is already readable
    through ``replay``, and a record in ``replay`` was (or is being) published.
    When ``append`` raises, the event may or may not have been stored (a
    request can time out after the server ran it); the caller retries with the
    same key, and a stored event is then answered from the dedupe record.

After a position
    ``replay(user, after)`` returns every retained record with
    ``offset > after.offset`` in ``after.epoch``.  It cannot honour ``after``
    (and says why in ``Replay.resync``, with no records) when the epoch is not
    the current one (``"unknown_epoch"``), when records after it have already
    been trimmed by size or age (``"expired"``), or when the offset is beyond
    the newest (``"unknown_position"``).  ``after=None`` means "from now": no
    records, only the head.  A partial replay is never returned.

Subscriptions
    ``subscribe(user)`` returns once records appended afterwards will reach
    the sink; so a reader subscribes first, replays second and drops live
    records whose offset it already has: no gap, no duplicate.  After
    ``unsubscribe(user)`` the user's records stop reaching the sink.  Calls
    for one user may interleave; the last one wins.

Revocations
    ``revoke(user, not_before, ttl_seconds)`` keeps, for ``ttl_seconds``, the
    latest ``not_before`` (unix time) given for the user: a sign-out
    everywhere.  Every replay made meanwhile carries it in
    ``Replay.revoked_before``, so a reader learns it in the read it makes
    anyway; it is stored before it is announced, and every replica with the
    user subscribed then hears :meth:`Sink.revoked` with the effective (latest)
    value.  A revocation is not a record: it takes no offset and is not replayed.

Failures
    Backend outages raise :class:`~sse_service.errors.BackendUnavailable`.
    When a backend that lost its connection has it back, it calls
    :meth:`Sink.resumed` so readers catch up from ``replay``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .errors import BackendUnavailable

__all__ = ["Appended", "Broker", "Position", "Record", "Replay", "Sink", "new_epoch"]

_POSITION = re.compile(r"^([0-9a-z]{1,32})-(0|[1-9][0-9]{0,17})$")


def new_epoch() -> str:
    """A fresh epoch name: 10 random hex digits, never reused in practice."""
    return secrets.token_hex(5)


# Named tuples rather than frozen dataclasses for what is made once per event:
# a frozen dataclass sets each field through object.__setattr__.  Tuple order is
# the order a dataclass with ``order=True`` would have: epoch, then offset.
class Position(NamedTuple):
    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.offset}"

    @staticmethod
    def parse(text: str) -> Position | None:
        """Parse a client-supplied id; ``None`` when it is not one of ours."""
        match = _POSITION.match(text.strip())
        if match is None:
            return None
        return Position(match.group(1), int(match.group(2)))


class Record(NamedTuple):
    """One stored event: ``data`` is the client-facing JSON line."""

    user_id: str
    epoch: str
    offset: int
    data: bytes

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)


class Appended(NamedTuple):
    record: Record
    duplicate: bool = False


class Replay(NamedTuple):
    head: Position
    records: list[Record]
    resync: str | None = None
    #: Tokens of the user issued before this unix time are refused (sign-out).
    revoked_before: float | None = None


class Sink(Protocol):
    """Receives records for subscribed users (the hub implements it)."""

    def deliver(self, record: Record) -> None: ...

    def resumed(self) -> None: ...

    def revoked(self, user_id: str, not_before: float) -> None:
        """End the user's streams whose token was issued before ``not_before``."""
        ...


class Broker(Protocol):
    async def start(self, sink: Sink) -> None: ...

    async def close(self) -> None: ...

    async def append(self, user_id: str, key: str, data: bytes) -> Appended:
        """Store ``data`` unless ``key`` was already stored for this user."""
        ...

    async def append_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[Appended | BackendUnavailable]:
        """``append`` for each ``(user_id, key, data)`` in order, in one batch.

        One result per item.  Once an item fails, every later item is reported
        failed too (it may or may not have been stored; a retry is answered
        from dedupe), so a caller that retries the failures keeps the order.
        """
        ...

    async def replay(self, user_id: str, after: Position | None) -> Replay: ...

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        """Keep the latest ``not_before`` of the user for ``ttl_seconds`` and tell
        every replica with the user subscribed (``Sink.revoked``)."""
        ...

    async def subscribe(self, user_id: str) -> None: ...

    async def unsubscribe(self, user_id: str) -> None: ...

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` when the backend cannot serve requests."""
        ...
