"""In-process broker: history in dictionaries, fan-out by direct call.

Serves one process.  Its epoch is drawn at start-up, so after a restart every
old id is answered with ``resync``, never with a silent partial replay.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .broker import Appended, Position, Record, Replay, Sink, new_epoch
from .errors import BackendUnavailable

__all__ = ["MemoryBroker"]

@dataclass(slots=True)
class _History:
    records: deque[tuple[Record, float, str]] = field(default_factory=deque)
    keys: dict[str, Record] = field(default_factory=dict)
    head: int = 0


class MemoryBroker:
    def __init__(self, history_size: int, history_ttl_seconds: float) -> None:
        self.epoch = new_epoch()
        self._size = history_size
        self._ttl = history_ttl_seconds
        self._users: dict[str, _History] = {}
        self._subscribed: set[str] = set()
        self._sink: Sink | None = None

    async def start(self, sink: Sink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    async def append(self, user_id: str, key: str, data: bytes) -> Appended:
        history = self._users.get(user_id)
        if history is None:
            history = self._users[user_id] = _History()
        self._trim(history, time.monotonic())
        existing = history.keys.get(key)
        if existing is not None:
            return Appended(existing, duplicate=True)
        history.head += 1
        record = Record(user_id, self.epoch, history.head, data)
        history.records.append((record, time.monotonic(), key))
        history.keys[key] = record
        if len(history.records) > self._size:
            _, _, old_key = history.records.popleft()
            history.keys.pop(old_key, None)
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
        history = self._users.get(user_id)
        if history is not None:
            self._trim(history, time.monotonic())
        head_offset = history.head if history else 0
        head = Position(self.epoch, head_offset)
        if after is None:
            return Replay(head)
        if after.epoch != self.epoch:
            return Replay(head, resync="unknown_epoch")
        if after.offset > head_offset:
            return Replay(head, resync="unknown_position")
        records = history.records if history else deque()
        first = records[0][0].offset if records else head_offset + 1
        if after.offset < first - 1:
            return Replay(head, resync="expired")
        skip = after.offset - first + 1
        return Replay(head, [entry[0] for entry in list(records)[skip:]])

    async def subscribe(self, user_id: str) -> None:
        """Appends reach the sink directly, from now on."""
        self._subscribed.add(user_id)

    async def unsubscribe(self, user_id: str) -> None:
        self._subscribed.discard(user_id)

    async def ping(self) -> None:
        """Always available."""

    def _trim(self, history: _History, now: float) -> None:
        cutoff = now - self._ttl
        while history.records and history.records[0][1] < cutoff:
            _, _, old_key = history.records.popleft()
            history.keys.pop(old_key, None)
