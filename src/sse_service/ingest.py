"""Deliveries from Dapr: validation, append, and the status daprd reads.

Replies follow daprd's reading of them (docs/dapr.md): ``SUCCESS`` once the event is in
the user's history and handed to local streams, ``DROP`` for an event no retry can fix
(logged at WARNING with the CloudEvent id and the reason), ``RETRY`` only for a transient
backend failure.  Bulk deliveries get one status per entry, processed in order so one
user's events keep their order; a dropped entry holds back none of the others.

No input produces a 5xx or an endless RETRY: validation is pure, so whatever fails it
fails on every redelivery and is dropped.  A body that is no delivery at all (over
``SSE_MAX_DELIVERY_BYTES``, not JSON) is dropped whole: ``200 DROP`` for a single
delivery, ``404`` for a bulk one, whose entryIds cannot be read (daprd retries every
entry a 200 does not name, and drops all on a 404).  Reading the envelopes is
:mod:`.cloudevents`' part.

A sign-out (``session.revoked``, :func:`~.events.parse_revocation`) on the same topic
is no task event: it goes to :meth:`Broker.revoke`, never to the history, answered
like an append (``SUCCESS``, ``RETRY`` while the backend is away, ``DROP`` when
malformed), in its place in a bulk delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .broker import Appended, Broker
from .cloudevents import dedupe_key, event_name, read_bulk, traceparent, unwrap
from .config import Settings
from .deliveries import Reply, decode_delivery
from .errors import BackendUnavailable, DaprStatus, EventError
from .events import is_revocation, parse_revocation, parse_task_event
from .logs import escape
from .logs_json import trace_id
from .metrics import Metrics

__all__ = ["ROUTE", "Ingest"]

logger = logging.getLogger(__name__)

ROUTE = "/task-updates"
#: How much of a CloudEvent id a log line shows.
_NAME_CHARS = 64
#: An event as delivered (a decoded body or bulk entry) and its broker metadata.
_Delivery = tuple[object, Mapping[str, object]]


class _Ready(NamedTuple):
    """A delivery that passed validation: what to append, and its name for logs."""

    user_id: str
    key: str
    data: bytes
    name: str
    #: Set for a sign-out, which has no key nor data.
    not_before: float | None = None
    #: The CloudEvent ``time`` (unix seconds), when it has a readable one.
    published: float | None = None


class Ingest:
    def __init__(self, broker: Broker, settings: Settings, metrics: Metrics | None = None) -> None:
        self._broker = broker
        self._metrics = metrics or Metrics()
        self._max_bytes = settings.max_event_bytes
        self._max_delivery = settings.max_delivery_bytes
        self._revocation_ttl = settings.revocation_ttl_seconds

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The reply to one POST; never raises."""
        started = time.perf_counter()
        try:
            if len(body) > self._max_delivery:
                return self.refuse(headers, f"delivery of {len(body)} bytes exceeds "
                                            f"SSE_MAX_DELIVERY_BYTES={self._max_delivery}")
            try:
                document = decode_delivery(body)
            except EventError as exc:
                return self.refuse(headers, exc.reason)
            bulk = read_bulk(document)
            if bulk is not None:
                for _ in range(bulk.skipped):
                    logger.warning("skipping a bulk entry without a usable entryId")
                statuses, _ = await self.store(bulk.deliveries)
                # The members themselves: str values, with no enum lookup per entry.
                return Reply({"statuses": [{"entryId": i, "status": s}
                                           for i, s in zip(bulk.entry_ids, statuses, strict=True)]})
            (status,), (reason,) = await self.store([(document, headers)])
            # The reason is for people (`sse-service publish` prints it); daprd reads the status.
            return Reply({"status": status.value} if reason is None
                         else {"status": status.value, "reason": reason})
        finally:
            self._metrics.ingest_seconds.observe(time.perf_counter() - started)

    def refuse(self, headers: Mapping[str, str], reason: str) -> Reply:
        """The reply to a body that is no delivery at all, dropped whole (one entry)."""
        self._metrics.entries[DaprStatus.DROP] += 1
        logger.warning("dropping a delivery: %s", escape(reason),
                       extra={"dapr_status": DaprStatus.DROP.value, "reason": escape(reason),
                              "trace_id": trace_id(headers.get("traceparent"))})
        # daprd sends bulk deliveries as application/json, single ones as cloudevents+json.
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        return Reply({"status": DaprStatus.DROP.value, "reason": escape(reason)},
                     404 if content_type == "application/json" else 200)

    async def store(self, deliveries: list[_Delivery]) -> tuple[list[DaprStatus], list[str | None]]:
        """Validate each delivery, append the valid ones in order (one batch), never
        raise: each one's status, and why each dropped one was dropped (escaped)."""
        statuses: list[DaprStatus] = []
        reasons: list[str | None] = [None] * len(deliveries)
        ready: list[tuple[int, _Ready]] = []
        revocations = False
        for index, (event, metadata) in enumerate(deliveries):
            item = self._prepare(event, metadata)
            if isinstance(item, str):
                statuses.append(DaprStatus.DROP)
                reasons[index] = item
            else:
                ready.append((index, item))
                statuses.append(DaprStatus.RETRY)
                revocations = revocations or item.not_before is not None
        results: Sequence[Appended | BackendUnavailable | None] = ()
        try:
            if revocations:
                results = await self._in_order([r for _, r in ready])
            elif ready:
                results = await self._broker.append_many(
                    [(r.user_id, r.key, r.data) for _, r in ready])
        except Exception as exc:
            logger.error("asking Dapr to retry %d events: unexpected %s",
                         len(ready), escape(f"{type(exc).__name__}: {exc}"),
                         extra={"dapr_status": DaprStatus.RETRY.value})
            logger.debug("the unexpected error", exc_info=True)
        else:
            self._stored(ready, results, deliveries, statuses)
        for status in statuses:
            self._metrics.entries[status] += 1
        return statuses, reasons

    def _stored(self, ready: list[tuple[int, _Ready]],
                results: Sequence[Appended | BackendUnavailable | None],
                deliveries: list[_Delivery], statuses: list[DaprStatus]) -> None:
        """Each stored delivery's status becomes SUCCESS; the others stay RETRY."""
        now = time.time()
        for (index, item), result in zip(ready, results, strict=True):
            if isinstance(result, BackendUnavailable):
                # Later items failed too (append_many keeps order): daprd retries them all.
                logger.warning("asking Dapr to retry CloudEvent %s: %s",
                               escape(item.name, _NAME_CHARS), escape(result.reason),
                               extra=_fields(item.name, DaprStatus.RETRY, item.user_id,
                                             *deliveries[index], reason=result.reason))
                continue
            statuses[index] = DaprStatus.SUCCESS
            if result is None:
                logger.info("sign-out of user %s: tokens issued before %s are refused",
                            escape(item.user_id), item.not_before,
                            extra=_fields(item.name, DaprStatus.SUCCESS, item.user_id,
                                          *deliveries[index]))
            elif result.duplicate:
                self._metrics.duplicates += 1
                logger.info("CloudEvent %s already stored as %s; acknowledged again",
                            escape(item.name, _NAME_CHARS), result.record.position,
                            extra=_fields(item.name, DaprStatus.SUCCESS, item.user_id,
                                          *deliveries[index]))
            elif item.published is not None:
                # A publisher's clock ahead of ours would make it negative.
                lag = now - item.published
                self._metrics.publish_lag.observe(lag if lag > 0.0 else 0.0)

    async def _in_order(self, items: list[_Ready]) -> list[Appended | BackendUnavailable | None]:
        """Appends and sign-outs in delivery order (``None``: a sign-out kept).  A run
        of appends is one batch; once anything fails, everything after it is
        reported failed too, as ``append_many`` does, so retries keep the order."""
        results: list[Appended | BackendUnavailable | None] = []
        failed: BackendUnavailable | None = None
        run: list[_Ready] = []
        for item in [*items, None]:
            if item is not None and item.not_before is None:
                run.append(item)
                continue
            if run and failed is None:
                results.extend(await self._broker.append_many(
                    [(r.user_id, r.key, r.data) for r in run]))
                last = results[-1]
                failed = last if isinstance(last, BackendUnavailable) else None
            elif run:
                results.extend([failed] * len(run))
            run = []
            if item is None:
                break
            if failed is None and item.not_before is not None:
                try:
                    await self._broker.revoke(item.user_id, item.not_before,
                                              self._revocation_ttl)
                except BackendUnavailable as exc:
                    failed = exc
            results.append(failed)
        return results

    def _prepare(self, event: object, metadata: Mapping[str, object]) -> _Ready | str:
        """The event ready to append, or why it is dropped (logged, and escaped)."""
        # The CloudEvent id names it in logs; read from the raw event only when
        # the envelope has none (or cannot be read).
        name: str | None = None
        user: str | None = None
        try:
            envelope = unwrap(event)
            name = envelope.cloudevent_id or event_name(event)
            if is_revocation(envelope.payload):
                revocation = parse_revocation(envelope.payload, time.time())
                return _Ready(revocation.user_id, "", b"", name, revocation.not_before)
            task_event = parse_task_event(envelope.payload)
            user = task_event.user_id
            data = task_event.data()
            if len(data) > self._max_bytes:
                raise EventError(f"event of {len(data)} bytes exceeds "
                                 f"SSE_MAX_EVENT_BYTES={self._max_bytes}")
            key = dedupe_key(envelope, metadata, data)
        except Exception as exc:
            if name is None:
                name = event_name(event)
            # Validation does no I/O: what fails here fails on every redelivery.
            if isinstance(exc, EventError):
                level, reason, field = logging.WARNING, escape(exc.reason), exc.reason
            else:
                field = type(exc).__name__
                level, reason = logging.ERROR, f"unexpected {field} while reading it"
            logger.log(level, "dropping CloudEvent %s: %s", escape(name, _NAME_CHARS), reason,
                       extra=_fields(name, DaprStatus.DROP, user, event, metadata, field))
            return reason
        # tuple.__new__: a NamedTuple's own __new__ is a Python function, a frame per call.
        return tuple.__new__(_Ready, (task_event.user_id, key, data, name, None,
                                      self._metrics.published_at(event)))


def _fields(name: str, status: DaprStatus, user: str | None, event: object,
            metadata: Mapping[str, object], reason: str | None = None) -> dict[str, object]:
    """The structured fields of a log line about one delivery."""
    return {"cloudevent_id": escape(name, _NAME_CHARS), "dapr_status": status.value,
            "user_id": None if user is None else escape(user),
            "trace_id": trace_id(traceparent(event, metadata)),
            "reason": None if reason is None else escape(reason)}

