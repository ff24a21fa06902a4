"""Prometheus export: metric families made at scrape time, served on a port of their own.

The collector of :func:`build_registry` (a registry per application, never the
global one) turns the integers of :class:`.metrics.Metrics` into metric
families when Prometheus scrapes, and reads the gauges (open streams, users,
the Redis pub/sub connection) from their owners then, so no gauge is
maintained per event.  :class:`MetricsServer` serves it on
``SSE_METRICS_PORT`` from a thread of its own: a scrape never waits for the
event loop, and reads integers the loop writes (each read is atomic; a
histogram's buckets are copied at once, so they add up to its count).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
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

from .metrics import Histogram, Metrics

__all__ = ["PREFIX", "MetricsServer", "build_registry", "histogram_family"]

logger = logging.getLogger(__name__)

PREFIX = "sse_service_"


def histogram_family(histogram: Histogram, name: str, documentation: str) -> HistogramMetricFamily:
    counts, total = list(histogram.counts), histogram.total
    bounds = [*map(floatToGoString, histogram.bounds), "+Inf"]
    buckets = list(zip(bounds, accumulate(counts), strict=True))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


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
        yield histogram_family(m.ingest_seconds, PREFIX + "ingest_duration_seconds",
                               "Time to answer one delivery, from its whole body.")
        yield histogram_family(m.publish_lag, PREFIX + "publish_lag_seconds",
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
