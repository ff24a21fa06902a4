"""Load generator for the ``GET /events`` + ``POST /task-updates`` contract.

Streams are raw HTTP/1.1 connections on uvloop (an ``asyncio.Protocol`` each,
a few hundred bytes of state): the request is written once, the chunked body
is decoded with a minimal state machine and events are counted by their
``data:`` lines.  Every task payload carries a per-user sequence number
(``"seq"``) and the publish time (``"ts"``, ``time.time_ns()``), so a stream
can check it received every event of its user, in order, and measure the
publish-to-receive latency on the same clock.

Publishers are a few keep-alive connections; each owns a fixed subset of the
users and waits for the acknowledgement of one delivery before sending the
next, so the order a user's events are stored in is the order they were
numbered in.

Only loopback targets are accepted; every phase is bounded in size and time.

    python benchmarks/loadgen.py open --port 8005 --connections 1000
    python benchmarks/loadgen.py saturate --port 8005 --connections 1000 --users 100
    python benchmarks/loadgen.py latency --port 8005 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import jwt
import uvloop

__all__ = [
    "Target",
    "cpu_seconds",
    "latency",
    "memory_kib",
    "open_idle",
    "raise_file_limit",
    "runqueue_wait_seconds",
    "saturate",
]

LOOPBACK = "127.0.0.1"
DEFAULT_SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"
NO_TRACE = "00-00000000000000000000000000000000-0000000000000000-00"
#: Seconds a delivery (or a publisher's connect) may take before it counts as failed.
REQUEST_TIMEOUT = 30.0

_SEQ = re.compile(rb'"seq": ?(\d+)')
_TS = re.compile(rb'"ts": ?(\d+)')
_CLOSING = re.compile(rb": closing: ([A-Za-z_]+)")
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """One server: where to connect and (optionally) its pid, for memory and CPU probes."""

    port: int
    pid: int | None = None
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        if self.host != LOOPBACK:
            raise ValueError("the load generator only targets 127.0.0.1")


# -- process probes ---------------------------------------------------------------------


def raise_file_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def memory_kib(pid: int) -> dict[str, int]:
    """RSS from ``/proc/<pid>/status``; PSS and USS from ``smaps_rollup`` when readable."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            fields = {}
            for line in rollup:
                parts = line.split()
                if len(parts) >= 3 and parts[0].endswith(":"):
                    fields[parts[0][:-1]] = int(parts[1])
        out["pss"] = fields.get("Pss", 0)
        out["uss"] = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (contention),
    from ``/proc/<pid>/task/*/schedstat``."""
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                total += int(schedstat.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _wait_total(targets: Sequence[Target]) -> float:
    return sum(runqueue_wait_seconds(t.pid) for t in targets if t.pid is not None)


def _memory_total(targets: Sequence[Target]) -> dict[str, int]:
    total: dict[str, int] = {}
    for target in targets:
        if target.pid is None:
            continue
        for key, value in memory_kib(target.pid).items():
            total[key] = total.get(key, 0) + value
    return total


def _cpu_total(targets: Sequence[Target]) -> float:
    return sum(cpu_seconds(t.pid) for t in targets if t.pid is not None)


# -- tokens and payloads ------------------------------------------------------------------


class Tokens:
    """One HS256 token per user, minted once."""

    def __init__(self, secret: str, ttl: int = 3600) -> None:
        self._secret = secret
        self._ttl = ttl
        self._cache: dict[str, str] = {}

    def __call__(self, user: str) -> str:
        token = self._cache.get(user)
        if token is None:
            now = int(time.time())
            claims = {"sub": user, "iat": now, "exp": now + self._ttl}
            token = self._cache[user] = jwt.encode(claims, self._secret, algorithm="HS256")
        return token


# A task as a task API would publish it (~300 bytes on the wire), plus the
# sequence number and publish time the streams check.
_TASK = (
    b'{"id":%d,"seq":%d,"ts":%d,"title":"Prepare the quarterly report %d",'
    b'"description":"Collect the numbers from finance and draft the summary",'
    b'"status":"in_progress","priority":"medium","tags":["work","reports"],'
    b'"due_date":"2026-12-01","created_at":"2026-11-27T08:00:00Z",'
    b'"updated_at":"2026-11-27T08:05:00Z"}'
)
_CLOUDEVENT = (
    b'{"data":{"event_type":"task.updated","task":%s,"user_id":"%s"},'
    b'"datacontenttype":"application/json","id":"%s","pubsubname":"taskpubsub",'
    b'"source":"task-api","specversion":"1.0","time":"2026-11-27T08:05:00Z",'
    b'"topic":"task-updates","traceid":"' + NO_TRACE.encode() + b'","traceparent":"'
    + NO_TRACE.encode() + b'","tracestate":"","type":"com.dapr.event.sent"}'
)
_ENTRY = (
    b'{"entryId":"%d","event":%s,"contentType":"application/cloudevents+json","metadata":{}}'
)
_BULK = (
    b'{"entries":[%s],"id":"%s","metadata":{},"pubsubname":"taskpubsub",'
    b'"topic":"task-updates","type":"com.dapr.event.sent.bulk"}'
)


def cloudevent(user: bytes, seq: int, event_id: bytes, ts: int) -> bytes:
    task = _TASK % (seq, seq, ts, seq)
    return _CLOUDEVENT % (task, user, event_id)


# -- streams --------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every stream of one phase reports into."""

    latencies: list[int] | None = None
    last_event: float = 0.0


class Stream(asyncio.Protocol):
    """One SSE connection: counts events, checks their order, measures latency."""

    __slots__ = (
        "user",
        "index",
        "_request",
        "_opened",
        "_shared",
        "_transport",
        "_head",
        "_chunked",
        "_chunk_left",
        "_skip",
        "_cbuf",
        "_sbuf",
        "status",
        "received",
        "last_seq",
        "disorder",
        "other",
        "closing",
        "closed",
        "bytes",
    )

    def __init__(
        self, user: str, index: int, request: bytes, opened: asyncio.Future[None], shared: Shared
    ) -> None:
        self.user = user
        self.index = index
        self._request = request
        self._opened = opened
        self._shared = shared
        self._transport: asyncio.Transport | None = None
        self._head: bytes | None = b""
        self._chunked = False
        self._chunk_left = 0
        self._skip = 0
        self._cbuf = b""
        self._sbuf = b""
        self.status = 0
        self.received = 0
        self.last_seq = 0
        self.disorder = 0
        self.other = 0
        self.closing: str | None = None
        self.closed = False
        self.bytes = 0

    # asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._opened.done():
            self._opened.set_exception(ConnectionError(f"closed before the first bytes: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self.status = int(head[9:12])
            if self.status != 200:
                self._refused(head, end)
                return
            self._head = None
            self._chunked = b"transfer-encoding: chunked" in head[:end].lower()
            data = head[end + 4 :]
            if not data:
                return
        body = self._dechunk(data) if self._chunked else data
        if not body:
            return
        if not self._opened.done():
            self._opened.set_result(None)
        self._feed(body)

    def _refused(self, head: bytes, end: int) -> None:
        """Fail the opening with the status and the reply's ``detail`` once it is all here."""
        match = _CONTENT_LENGTH.search(head[:end])
        body = head[end + 4 :]
        if match is not None and len(body) < int(match.group(1)):
            self._head = head
            return
        self._head = None
        try:
            detail = str(json.loads(body).get("detail", ""))
        except (ValueError, AttributeError):
            detail = ""
        if not self._opened.done():
            self._opened.set_exception(ConnectionError(f"HTTP {self.status} {detail}".strip()))
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # decoding -------------------------------------------------------------------------
    def _dechunk(self, data: bytes) -> bytes:
        buf = self._cbuf + data if self._cbuf else data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            if self._chunk_left:
                take = min(self._chunk_left, size - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._skip = 2
                continue
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:
                pos = size
                break
            self._chunk_left = length
        self._cbuf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    def _feed(self, body: bytes) -> None:
        buf = self._sbuf + body if self._sbuf else body
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._sbuf = buf
            return
        part = buf[: end + 2]
        self._sbuf = buf[end + 2 :]
        seqs = _SEQ.findall(part)
        data_lines = part.count(b"data:")
        if data_lines != len(seqs):
            self.other += data_lines - len(seqs)
        if b": closing:" in part:
            match = _CLOSING.search(part)
            self.closing = match.group(1).decode() if match else "unknown"
        if not seqs:
            return
        shared = self._shared
        if shared.latencies is not None:
            now = time.time_ns()
            shared.latencies.extend(now - int(ts) for ts in _TS.findall(part))
        shared.last_event = time.perf_counter()
        expected = self.last_seq + 1
        for raw in seqs:
            seq = int(raw)
            if seq != expected:
                self.disorder += 1
            expected = seq + 1
        self.last_seq = expected - 1
        self.received += len(seqs)


@dataclass
class Opened:
    streams: list[Stream]
    failures: dict[str, int]
    seconds: float


def _request(port: int, token: str) -> bytes:
    return (
        f"GET /events HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()


async def open_streams(
    targets: Sequence[Target],
    users: Sequence[str],
    tokens: Tokens,
    *,
    concurrency: int,
    shared: Shared,
    timeout: float = 30.0,
    phase_timeout: float = 300.0,
) -> Opened:
    """Open one stream per entry of ``users`` (spread round-robin over ``targets``),
    at most ``concurrency`` at a time, each until its first body bytes arrive.

    Each attempt gives up after ``timeout`` seconds, the whole phase after
    ``phase_timeout``; both count as failures.
    """
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)
    streams: list[Stream] = []
    failures: dict[str, int] = {}

    async def one(index: int, user: str) -> None:
        target = targets[index % len(targets)]
        request = _request(target.port, tokens(user))
        async with limit:
            opened: asyncio.Future[None] = loop.create_future()
            stream = Stream(user, index, request, opened, shared)
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(lambda: stream, target.host, target.port)
                    await opened
            except (OSError, TimeoutError) as exc:
                reason = type(exc).__name__ if not str(exc).startswith("HTTP") else str(exc)
                failures[reason] = failures.get(reason, 0) + 1
                stream.close()
                return
            streams.append(stream)

    for user in users:
        tokens(user)  # mint before the clock starts
    start = time.perf_counter()
    jobs = [asyncio.ensure_future(one(i, u)) for i, u in enumerate(users)]
    _, pending = await asyncio.wait(jobs, timeout=phase_timeout)
    for job in pending:
        job.cancel()
    if pending:
        failures["phase_timeout"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    seconds = time.perf_counter() - start
    streams.sort(key=lambda s: s.index)
    return Opened(streams, failures, seconds)


async def close_streams(streams: Sequence[Stream], wait: float = 2.0) -> None:
    for stream in streams:
        stream.close()
    deadline = time.perf_counter() + wait
    while time.perf_counter() < deadline and not all(s.closed for s in streams):
        await asyncio.sleep(0.02)


# -- publishers -----------------------------------------------------------------------------


class Publisher:
    """One keep-alive HTTP/1.1 connection that POSTs deliveries and reads the replies."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            self._reader, self._writer = await asyncio.open_connection(
                self.target.host, self.target.port
            )

    async def post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        head = (
            f"POST /task-updates HTTP/1.1\r\nHost: {LOOPBACK}:{self.target.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"traceparent: {NO_TRACE}\r\npubsubname: taskpubsub\r\n\r\n"
        ).encode()
        self._writer.write(head + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        chunked = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                payload = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(payload[:-2])
            return status, b"".join(parts)
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
            self._reader = None


@dataclass
class Ledger:
    """What the publishers sent: the last sequence number of each user, and failures."""

    last: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    failed: int = 0
    requests: int = 0
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def note_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


def _next(ledger: Ledger, user: str) -> int:
    seq = ledger.last.get(user, 0) + 1
    ledger.last[user] = seq
    return seq


async def _publish_worker(
    worker: int,
    targets: Sequence[Target],
    users: Sequence[str],
    ledger: Ledger,
    *,
    batch: int,
    until: float,
    interval: float | None,
    offset: float,
) -> None:
    """POST deliveries for ``users`` until ``until`` (perf_counter).

    With ``interval`` None: bulk envelopes of ``batch`` entries, back to back.
    Otherwise one CloudEvent every ``interval`` seconds (fixed schedule).
    Successive requests alternate between ``targets``.
    """
    if not users:
        return
    publishers = [Publisher(t) for t in targets]
    for publisher in publishers:
        await publisher.connect()
    encoded = [u.encode() for u in users]
    prefix = f"{uuid.uuid4().hex[:12]}-{worker}-".encode()
    cursor = 0
    request = 0
    next_at = time.perf_counter() + offset
    try:
        while True:
            now = time.perf_counter()
            if now >= until:
                return
            if interval is not None:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                    if time.perf_counter() >= until:
                        return
                elif now - next_at > interval:
                    ledger.late += 1
                next_at += interval
            publisher = publishers[request % len(publishers)]
            request += 1
            count = 1 if interval is not None else batch
            entries = []
            ts = time.time_ns()
            for entry_id in range(count):
                slot = cursor % len(users)
                cursor += 1
                seq = _next(ledger, users[slot])
                event_id = prefix + b"%d-%d" % (slot, seq)
                entries.append((entry_id, cloudevent(encoded[slot], seq, event_id, ts)))
            if interval is not None:
                body, content_type = entries[0][1], "application/cloudevents+json"
            else:
                joined = b",".join(_ENTRY % (i, event) for i, event in entries)
                body = _BULK % (joined, uuid.uuid4().hex.encode())
                content_type = "application/json"
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, reply = await publisher.post(body, content_type)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                ledger.failed += count
                ledger.note_error(type(exc).__name__)
                await publisher.close()
                continue
            ledger.requests += 1
            ok = _successes(status, reply, count)
            ledger.acked += ok
            if ok != count:
                ledger.failed += count - ok
                ledger.note_error(f"HTTP {status}: {reply[:120]!r}")
    finally:
        for publisher in publishers:
            await publisher.close()


def _successes(status: int, reply: bytes, count: int) -> int:
    if status != 200:
        return 0
    try:
        document = json.loads(reply)
    except ValueError:
        return 0
    if "statuses" in document:
        return sum(1 for s in document["statuses"] if s.get("status") == "SUCCESS")
    return count if document.get("status") == "SUCCESS" else 0


async def publish(
    targets: Sequence[Target],
    users: Sequence[str],
    ledger: Ledger,
    *,
    workers: int,
    seconds: float,
    batch: int = 100,
    rate: float | None = None,
) -> float:
    """Run ``workers`` publishers for ``seconds``; each owns ``users[w::workers]``.

    ``rate`` None publishes bulk batches as fast as they are acknowledged;
    otherwise single CloudEvents at ``rate`` events/s in total.  Returns the
    elapsed time.
    """
    workers = max(1, min(workers, len(users)))
    interval = None if rate is None else workers / rate
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(
        _publish_worker(
            w, targets, users[w::workers], ledger, batch=batch, until=until,
            interval=interval, offset=0.0 if interval is None else w * interval / workers,
        )
        for w in range(workers)
    ))
    return time.perf_counter() - start


def _delivery_check(streams: Sequence[Stream], ledger: Ledger) -> dict[str, int]:
    expected = sum(ledger.last.get(s.user, 0) for s in streams)
    received = sum(s.received for s in streams)
    missing = sum(max(0, ledger.last.get(s.user, 0) - s.received) for s in streams)
    return {
        "expected": expected,
        "received": received,
        "missing": missing,
        "out_of_order": sum(s.disorder for s in streams),
        "complete_streams": sum(
            1 for s in streams if s.received == ledger.last.get(s.user, 0) and not s.disorder
        ),
        "disconnected": sum(1 for s in streams if s.closed),
        "non_task_events": sum(s.other for s in streams),
    }


async def _wait_delivered(streams: Sequence[Stream], ledger: Ledger, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if all(s.closed or s.received >= ledger.last.get(s.user, 0) for s in streams):
            break
        await asyncio.sleep(0.02)
    return time.perf_counter() - start


def _closings(streams: Sequence[Stream]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for stream in streams:
        if stream.closing is not None:
            reasons[stream.closing] = reasons.get(stream.closing, 0) + 1
    return reasons


def _users(count: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def _assign(users: Sequence[str], per_user: int) -> list[str]:
    """Stream ``i`` belongs to ``users[i // per_user]``; consecutive streams of a user
    land on different targets when there are several."""
    return [user for user in users for _ in range(per_user)]


# -- phases ---------------------------------------------------------------------------------


def _idle_users(connections: int, per_user: int, prefix: str) -> list[str]:
    """One user name per stream, ``per_user`` streams sharing each user."""
    return _assign(_users(-(-connections // per_user), prefix), per_user)[:connections]


async def open_idle(
    targets: Sequence[Target],
    *,
    connections: int,
    per_user: int,
    concurrency: int,
    secret: str,
    settle: float = 1.0,
    warmup: int = 50,
) -> dict[str, Any]:
    """Memory per idle stream and the accept rate: open ``connections`` streams
    as fast as ``concurrency`` allows, until each got its first bytes."""
    tokens = Tokens(secret)
    shared = Shared()
    users = _idle_users(connections, per_user, "idle")
    warm = await open_streams(
        targets, _assign(_users(max(1, warmup // per_user), "warm"), per_user), tokens,
        concurrency=concurrency, shared=shared,
    )
    await close_streams(warm.streams)
    await asyncio.sleep(0.5)
    for user in users:
        tokens(user)
    before = _memory_total(targets)
    cpu_before = _cpu_total(targets)
    wait_before = _wait_total(targets)
    opened = await open_streams(targets, users, tokens, concurrency=concurrency, shared=shared)
    cpu_open = _cpu_total(targets) - cpu_before
    wait_open = _wait_total(targets) - wait_before
    await asyncio.sleep(settle)
    after = _memory_total(targets)
    count = len(opened.streams)
    result: dict[str, Any] = {
        "connections": connections,
        "opened": count,
        "failures": opened.failures,
        "per_user": per_user,
        "concurrency": concurrency,
        "open_seconds": round(opened.seconds, 3),
        "accept_per_second": round(count / opened.seconds, 1) if opened.seconds else None,
        "server_cpu_seconds": round(cpu_open, 3),
        "accept_per_server_cpu_second": round(count / cpu_open, 1) if cpu_open else None,
        "server_runqueue_wait_seconds": round(wait_open, 3),
        "memory_before_kib": before,
        "memory_after_kib": after,
        "memory_per_connection_bytes": {
            key: round((after[key] - before.get(key, 0)) * 1024 / count)
            for key in after
        } if count else {},
        "still_open": sum(1 for s in opened.streams if not s.closed),
    }
    await close_streams(opened.streams)
    return result


async def hold_idle(
    targets: Sequence[Target],
    *,
    connections: int,
    per_user: int,
    concurrency: int,
    secret: str,
    seconds: float,
) -> dict[str, Any]:
    """The standing cost of idle streams: open ``connections`` streams, then measure
    server CPU and memory while they sit idle (keepalives only) for ``seconds``."""
    tokens = Tokens(secret)
    users = _idle_users(connections, per_user, "hold")
    opened = await open_streams(targets, users, tokens, concurrency=concurrency, shared=Shared())
    await asyncio.sleep(1.0)
    received = sum(s.bytes for s in opened.streams)
    cpu_before = _cpu_total(targets)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu = _cpu_total(targets) - cpu_before
    count = len(opened.streams)
    result: dict[str, Any] = {
        "connections": connections,
        "opened": count,
        "failures": opened.failures,
        "idle_seconds": round(elapsed, 2),
        "server_cpu_share": round(cpu / elapsed, 4),
        "server_memory_kib": _memory_total(targets),
        "bytes_per_stream_per_second": round(
            (sum(s.bytes for s in opened.streams) - received) / max(count, 1) / elapsed, 2
        ),
        "still_open": sum(1 for s in opened.streams if not s.closed),
    }
    await close_streams(opened.streams)
    return result


async def saturate(
    targets: Sequence[Target],
    *,
    users: int,
    per_user: int,
    seconds: float,
    batch: int,
    workers: int,
    concurrency: int,
    secret: str,
    drain_timeout: float = 30.0,
    backend_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Delivered events/s with the publishers acking as fast as the server allows."""
    tokens = Tokens(secret)
    shared = Shared()
    names = _users(users, "sat")
    opened = await open_streams(
        targets, _assign(names, per_user), tokens, concurrency=concurrency, shared=shared
    )
    streams = opened.streams
    ledger = Ledger()
    cpu_before = _cpu_total(targets)
    wait_before = _wait_total(targets)
    backend_before = sum(cpu_seconds(pid) for pid in backend_pids)
    own_before = time.process_time()
    own_wait_before = runqueue_wait_seconds(os.getpid())
    start = time.perf_counter()
    published_for = await publish(
        targets, names, ledger, workers=workers, seconds=seconds, batch=batch
    )
    drained_in = await _wait_delivered(streams, ledger, drain_timeout)
    last = shared.last_event if shared.last_event > start else time.perf_counter()
    elapsed = last - start
    cpu = _cpu_total(targets) - cpu_before
    wait = _wait_total(targets) - wait_before
    backend = sum(cpu_seconds(pid) for pid in backend_pids) - backend_before
    own = time.process_time() - own_before
    own_wait = runqueue_wait_seconds(os.getpid()) - own_wait_before
    check = _delivery_check(streams, ledger)
    result: dict[str, Any] = {
        "streams": len(streams),
        "open_failures": opened.failures,
        "users": users,
        "per_user": per_user,
        "batch": batch,
        "publishers": workers,
        "publish_seconds": round(published_for, 3),
        "drain_seconds": round(drained_in, 3),
        "delivery_seconds": round(elapsed, 3),
        "published": ledger.acked,
        "publish_failures": ledger.failed,
        "publish_errors": ledger.errors,
        "published_per_second": round(ledger.acked / published_for, 1),
        "delivered_per_second": round(check["received"] / elapsed, 1) if elapsed else None,
        "server_cpu_share": round(cpu / elapsed, 3) if elapsed else None,
        "server_runqueue_wait_share": round(wait / elapsed, 3) if elapsed else None,
        "backend_cpu_share": round(backend / elapsed, 3) if elapsed else None,
        "delivered_per_server_cpu_second": round(check["received"] / cpu, 1) if cpu else None,
        "delivered_per_cpu_second_with_backend": (
            round(check["received"] / (cpu + backend), 1) if cpu + backend else None
        ),
        "loadgen_cpu_share": round(own / (time.perf_counter() - start), 3),
        "loadgen_runqueue_wait_share": round(own_wait / (time.perf_counter() - start), 3),
        "closings": _closings(streams),
        **check,
    }
    await close_streams(streams)
    return result


async def latency(
    targets: Sequence[Target],
    *,
    users: int,
    per_user: int,
    seconds: float,
    rate: float,
    workers: int,
    concurrency: int,
    secret: str,
    drain_timeout: float = 10.0,
    backend_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Publish-to-receive latency at a fixed rate of single CloudEvents."""
    tokens = Tokens(secret)
    shared = Shared(latencies=[])
    names = _users(users, "lat")
    opened = await open_streams(
        targets, _assign(names, per_user), tokens, concurrency=concurrency, shared=shared
    )
    streams = opened.streams
    ledger = Ledger()
    cpu_before = _cpu_total(targets)
    wait_before = _wait_total(targets)
    backend_before = sum(cpu_seconds(pid) for pid in backend_pids)
    start = time.perf_counter()
    published_for = await publish(
        targets, names, ledger, workers=workers, seconds=seconds, rate=rate
    )
    await _wait_delivered(streams, ledger, drain_timeout)
    cpu = _cpu_total(targets) - cpu_before
    wait = _wait_total(targets) - wait_before
    backend = sum(cpu_seconds(pid) for pid in backend_pids) - backend_before
    elapsed = time.perf_counter() - start
    samples = sorted(shared.latencies or [])
    check = _delivery_check(streams, ledger)
    result: dict[str, Any] = {
        "streams": len(streams),
        "open_failures": opened.failures,
        "users": users,
        "per_user": per_user,
        "target_rate": rate,
        "published": ledger.acked,
        "publish_failures": ledger.failed,
        "publish_errors": ledger.errors,
        "late_sends": ledger.late,
        "published_per_second": round(ledger.acked / published_for, 1),
        "server_cpu_share": round(cpu / elapsed, 3),
        "server_runqueue_wait_share": round(wait / elapsed, 3),
        "backend_cpu_share": round(backend / elapsed, 3),
        "samples": len(samples),
        "latency_ms": _percentiles(samples),
        "closings": _closings(streams),
        **check,
    }
    await close_streams(streams)
    return result


def _percentiles(samples: Sequence[int]) -> dict[str, float]:
    if not samples:
        return {}

    def at(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6, 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(samples[-1] / 1e6, 3),
        "mean": round(statistics.fmean(samples) / 1e6, 3),
    }


# -- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["open", "hold", "saturate", "latency"])
    parser.add_argument("--port", type=int, action="append", required=True,
                        help="server port on 127.0.0.1 (repeat for replicas)")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="server pid, in --port order (memory and CPU probes)")
    parser.add_argument("--secret", default=os.environ.get("SSE_JWT_SECRET", DEFAULT_SECRET))
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    limit = raise_file_limit()
    streams = args.connections if args.phase in ("open", "hold") else args.users * args.per_user
    if streams + 100 > limit:
        raise SystemExit(f"{streams} streams need more than the open-files limit {limit}")
    pids: list[int | None] = list(args.pid) + [None] * (len(args.port) - len(args.pid))
    targets = [Target(port, pid) for port, pid in zip(args.port, pids, strict=True)]
    phases: dict[str, Callable[[], Any]] = {
        "open": lambda: open_idle(
            targets, connections=args.connections, per_user=args.per_user,
            concurrency=args.concurrency, secret=args.secret,
        ),
        "hold": lambda: hold_idle(
            targets, connections=args.connections, per_user=args.per_user,
            concurrency=args.concurrency, secret=args.secret, seconds=args.seconds,
        ),
        "saturate": lambda: saturate(
            targets, users=args.users, per_user=args.per_user, seconds=args.seconds,
            batch=args.batch, workers=args.publishers, concurrency=args.concurrency,
            secret=args.secret,
        ),
        "latency": lambda: latency(
            targets, users=args.users, per_user=args.per_user, seconds=args.seconds,
            rate=args.rate, workers=args.publishers, concurrency=args.concurrency,
            secret=args.secret,
        ),
    }
    result = uvloop.run(phases[args.phase]())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
