"""Prometheus metrics: plain integers where things happen, metric families at scrape time.

The hot paths (fan-out, ingest, opening a stream) add to attributes of one
:class:`Metrics` per application with ``+=``: no lock, no label lookup.  The
collector of :func:`build_registry` (a registry per application, never the
global one) turns them into metric families when Prometheus scrapes, and reads
the gauges (open streams, users, the Redis pub/sub connection) from their
owners then, so no gauge is maintained per event.  :class:`MetricsServer`
serves it on ``SSE_METRICS_PORT`` from a thread of its own: a scrape never
waits for the event loop, and reads integers the loop writes (each read is
atomic; a histogram's buckets are copied at once, so they add up to its count).

Every label value is a member of an enum, counted from zero; nothing from a
request or an event ever becomes a label, so no user id can reach one.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from itertools import accumulate
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .errors import CloseReason, DaprStatus, ResyncReason

__all__ = [
    "REPLAYED",
    "Histogram",
    "Metrics",
    "MetricsServer",
    "Operation",
    "Refusal",
    "build_registry",
]

logger = logging.getLogger(__name__)

PREFIX = "sse_service_"
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

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.total
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        buckets = list(zip(bounds, accumulate(counts), strict=True))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


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


class _Collector:
    def __init__(self, metrics: Metrics, open_streams: Callable[[], int],
                 users: Callable[[], int], pubsub: Callable[[], bool] | None) -> None:
        self._metrics = metrics
        self._open_streams = open_streams
        self._users = users
        self._pubsub = pubsub
        try:
            self._version = version("sse-service")
        except PackageNotFoundError:
            self._version = "unknown"

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        gauges = [("open_streams", "Streams open now.", self._open_streams()),
                  ("users_with_streams", "Users with a stream open now.", self._users())]
        if self._pubsub is not None:
            gauges.append(("redis_pubsub_connected", "1 while the Redis pub/sub connection is "
                           "up with every subscription confirmed.", int(self._pubsub())))
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(PREFIX + name, documentation, value=value)
        counters = [
            ("streams_opened", "Streams opened.", m.streams_opened),
            ("gap_repairs", "History reads that filled a gap in live records.", m.gap_repairs),
            ("queued_frames", "Live event frames handed to streams.", m.queued_frames),
            ("queued_bytes", "Bytes of the frames in queued_frames.", m.queued_bytes),
            ("ingest_duplicates", "Entries stored before, acknowledged again.", m.duplicates),
        ]
        for name, documentation, value in counters:
            yield CounterMetricFamily(PREFIX + name, documentation, value=value)
        by_label: list[tuple[str, str, str, Mapping[Any, int]]] = [
            ("streams_refused", "Stream requests refused.", "reason", m.refused),
            ("streams_closed", "Opened streams that ended.", "reason", m.closed),
            ("resumes", "Streams opened with a Last-Event-ID.", "outcome", m.resumes),
            ("ingest_entries", "Delivered entries answered.", "status", m.entries),
            ("backend_errors", "Failed backend calls.", "operation", m.backend_errors),
        ]
        for name, documentation, label, values in by_label:
            family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
            for key, value in list(values.items()):
                family.add_metric([str(key)], value)
            yield family
        yield m.ingest_seconds.family(PREFIX + "ingest_duration_seconds",
                                      "Time to answer one delivery, from its whole body.")
        yield m.publish_lag.family(PREFIX + "publish_lag_seconds",
                                   "From the CloudEvent time to the event stored and fanned out.")
        info = GaugeMetricFamily(PREFIX + "build_info", "The running version.", labels=["version"])
        info.add_metric([self._version], 1)
        yield info


def build_registry(metrics: Metrics, open_streams: Callable[[], int], users: Callable[[], int],
                   pubsub: Callable[[], bool] | None = None) -> CollectorRegistry:
    """A registry of one application: its counters, its gauges and the process metrics."""
    registry = CollectorRegistry()
    registry.register(_Collector(metrics, open_streams, users, pubsub))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``GET /metrics`` on its own port (``0``: none), started and stopped by the lifespan."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def start(self) -> None:
        if self.port == 0:
            return
        try:
            self._server, self._thread = start_http_server(self.port, self._host,
                                                           registry=self._registry)
        except OSError as exc:
            # Streams matter more than their metrics; Prometheus shows the target down.
            logger.error("metrics not served: cannot listen on %s port %d (%s); free it or "
                         "set SSE_METRICS_PORT", self._host, self.port, exc.strerror or exc)
            return
        logger.info("metrics on http://%s:%d/metrics", self._host, self.port)

    async def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        # shutdown() waits for the serving loop's next poll (up to half a second).
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join, 5)
