"""What the service counts: plain integers, added to where things happen.

The hot paths (fan-out, ingest, opening a stream) add to attributes of one
:class:`Metrics` per application with ``+=``: no lock, no label lookup.
:mod:`.metrics_export` turns them into Prometheus metric families when a
scrape comes, and serves them.

Every label value is a member of an enum here, counted from zero; nothing
from a request or an event ever becomes a label, so no user id can reach one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from .errors import CloseReason, DaprStatus, ResyncReason

__all__ = ["INGEST_BUCKETS", "LAG_BUCKETS", "REPLAYED", "Histogram", "Metrics", "Operation",
           "Refusal"]

#: The resume outcome beside the resync reasons: the replay was given.
REPLAYED = "replayed"
#: One delivery, from its whole body to its reply (a Redis call is bounded at 3 s).
INGEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0)
#: Publisher to stored: up to the half hour a redelivery backlog may take.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 1800.0)


class Refusal(StrEnum):
    """Why a stream request was refused."""

    UNAUTHORIZED = "unauthorized"
    USER_LIMIT = "user_limit"
    CAPACITY = "capacity"
    DRAINING = "draining"
    RATE_LIMITED = "rate_limited"
    BACKEND_UNAVAILABLE = "backend_unavailable"


class Operation(StrEnum):
    """The backend calls whose failures are counted."""

    APPEND = "append"
    REPLAY = "replay"
    REVOKE = "revoke"
    SUBSCRIBE = "subscribe"
    PING = "ping"
    PUBSUB = "pubsub"


class Histogram:
    """Fixed buckets and ``bisect``: one list increment per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Metrics:
    """What the service counts.  Dictionaries hold every member of their enum from
    the start and never grow, so a scrape may copy them while the loop counts."""

    __slots__ = ("streams_opened", "refused", "closed", "resumes", "gap_repairs",
                 "queued_frames", "queued_bytes", "entries", "duplicates", "ingest_seconds",
                 "publish_lag", "backend_errors", "_stamp")

    def __init__(self) -> None:
        self.streams_opened = 0
        self.refused = dict.fromkeys(Refusal, 0)
        self.closed = dict.fromkeys(CloseReason, 0)
        self.resumes: dict[str, int] = dict.fromkeys((REPLAYED, *ResyncReason), 0)
        self.gap_repairs = 0
        self.queued_frames = 0
        self.queued_bytes = 0
        self.entries = dict.fromkeys(DaprStatus, 0)
        self.duplicates = 0
        self.ingest_seconds = Histogram(INGEST_BUCKETS)
        self.publish_lag = Histogram(LAG_BUCKETS)
        self.backend_errors = dict.fromkeys(Operation, 0)
        # The last CloudEvent time read, and its value: daprd's times have whole
        # seconds, so a burst of events shares one.
        self._stamp: tuple[str, float | None] = ("", None)

    def resumed(self, outcome: str) -> None:
        """A stream opened with a position: ``replayed`` or the resync reason."""
        # The reason may come from Redis as text: only the known ones are counted.
        if outcome in self.resumes:
            self.resumes[outcome] += 1

    def published_at(self, event: object) -> float | None:
        """The CloudEvent ``time`` in unix seconds; None if absent or not RFC 3339 with offset."""
        value = event.get("time") if isinstance(event, dict) else None
        if not isinstance(value, str):
            return None
        text, seconds = self._stamp
        if value != text:
            seconds = _unix_seconds(value)
            self._stamp = (value, seconds)
        return seconds


def _unix_seconds(text: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(text)
        return None if stamp.tzinfo is None else stamp.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
