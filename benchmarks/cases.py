"""The benchmark cases, each run against one deployment by the C load generator.

* ``idle``: memory per idle stream and streams accepted per second, one user
  (so one distinct token) per stream;
* ``fanout``: delivered events/s at saturation, many streams per user, one
  CloudEvent per POST;
* ``latency``: publish-to-receive percentiles at a fixed rate;
* ``ingest``: events/s ingested with one stream per user, single CloudEvents;
* ``bulk``: the same with daprd's bulk deliveries (the service only).

The service and the naive app get ``POST /task-updates`` exactly as daprd
sends it (CloudEvent envelope, ``traceparent`` and ``pubsubname`` headers);
Nchan gets the client-facing JSON on its publisher location; the trivial
server takes the CloudEvents like the service does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import native
from servers import Deployment

__all__ = ["Case", "Sizes", "bulk", "fanout", "idle", "ingest", "latency"]


@dataclass(frozen=True)
class Sizes:
    idle: int = 10_000
    concurrency: int = 200
    fan_users: int = 10
    fan_per_user: int = 100
    fan_seconds: float = 5.0
    lat_users: int = 100
    lat_per_user: int = 10
    #: Events/s; times ``lat_per_user`` gives deliveries/s.
    lat_rate: float = 1000.0
    lat_seconds: float = 8.0
    ingest_users: int = 1000
    ingest_seconds: float = 5.0
    batch: int = 50
    publishers: int = 4
    #: Requests in flight per publisher connection (single CloudEvents / bulk).
    depth: int = 128
    bulk_depth: int = 8
    drain: float = 30.0
    warmup: int = 50
    settle: float = 1.0


@dataclass
class Case:
    """What a case needs besides the deployment."""

    client: Path
    directory: Path
    sizes: Sizes
    tokens: loadgen.Tokens


def _server_cpu(deployment: Deployment) -> float:
    return sum(loadgen.cpu_seconds(pid) for pid in deployment.pids)


def _server_wait(deployment: Deployment) -> float:
    return sum(loadgen.runqueue_wait_seconds(pid) for pid in deployment.pids)


def _memory(deployment: Deployment) -> dict[str, int]:
    total: dict[str, int] = {}
    for pid in deployment.pids:
        for key, value in loadgen.memory_kib(pid).items():
            total[key] = total.get(key, 0) + value
    return total


def _streams(deployment: Deployment, case: Case, users: list[str],
             per_user: int) -> list[tuple[int, int, str, str]]:
    """Stream ``i`` belongs to ``users[i // per_user]``; streams alternate between servers."""
    targets = len(deployment.ports)
    out = []
    for i in range(len(users) * per_user):
        user = i // per_user
        if deployment.kind == "dapr":
            out.append((user, i % targets, "/events", case.tokens(users[user])))
        else:
            out.append((user, i % targets, f"/sub/{users[user]}", "-"))
    return out


def _publish_mode(deployment: Deployment, bulk: bool) -> str:
    if deployment.kind == "nchan":
        return "nchan"
    return "bulk" if bulk else "dapr"


def idle(deployment: Deployment, case: Case, run: int) -> dict[str, Any]:
    sizes = case.sizes
    warm_users = [f"warm{run}-{i}" for i in range(sizes.warmup)]
    native.run(case.client, deployment.ports,
               native.Load(warm_users, _streams(deployment, case, warm_users, 1),
                           concurrency=sizes.concurrency), case.directory / "warm")
    time.sleep(0.5)
    users = [f"idle{run}-{i}" for i in range(sizes.idle)]
    streams = _streams(deployment, case, users, 1)  # mints every token before any clock
    probes: dict[str, Any] = {}
    before = _memory(deployment)
    cpu, wait = _server_cpu(deployment), _server_wait(deployment)

    def opened(_: dict[str, Any]) -> None:
        probes["server_cpu_seconds"] = round(_server_cpu(deployment) - cpu, 3)
        probes["server_runqueue_wait_seconds"] = round(_server_wait(deployment) - wait, 3)
        time.sleep(sizes.settle)
        probes["memory_after_kib"] = _memory(deployment)

    py_cpu = time.process_time()
    load = native.Load(users, streams, concurrency=sizes.concurrency)
    result = native.run(case.client, deployment.ports, load, case.directory / "idle", opened)
    o = result["opened"]
    count = o["opened"]
    after = probes["memory_after_kib"]
    seconds = o["open_seconds"]
    server_cpu = probes["server_cpu_seconds"]
    loadgen_cpu = o["cpu_seconds"] + time.process_time() - py_cpu
    return {
        "connections": sizes.idle,
        "opened": count,
        "failures": o["failures"],
        "open_seconds": seconds,
        "accept_per_second": round(count / seconds, 1) if seconds else None,
        "accept_per_server_cpu_second": round(count / server_cpu, 1) if server_cpu else None,
        **probes,
        "memory_before_kib": before,
        "memory_per_connection_bytes": {
            key: round((after[key] - before.get(key, 0)) * 1024 / count) for key in after
        } if count else {},
        "server_runqueue_wait_share": round(probes["server_runqueue_wait_seconds"] / seconds, 3)
        if seconds else None,
        "loadgen_cpu_seconds": round(loadgen_cpu, 3),
        "opened_per_loadgen_cpu_second": round(count / loadgen_cpu, 1) if loadgen_cpu else None,
        "loadgen_cpu_share": round(loadgen_cpu / o["wall_seconds"], 3) if seconds else None,
        "loadgen_runqueue_wait_share": round(o["wait_seconds"] / o["wall_seconds"], 3)
        if seconds else None,
    }


def _stream_case(deployment: Deployment, case: Case, name: str, users: list[str],
                 per_user: int, load: native.Load) -> dict[str, Any]:
    load.streams = _streams(deployment, case, users, per_user)
    probes: dict[str, float] = {}
    logs_before = deployment.log_counts()

    def opened(o: dict[str, Any]) -> None:
        probes["cpu"] = _server_cpu(deployment)
        probes["wait"] = _server_wait(deployment)
        probes["backend"] = sum(loadgen.cpu_seconds(pid) for pid in deployment.backend_pids)

    def done(_: dict[str, Any]) -> None:
        probes["cpu"] = _server_cpu(deployment) - probes["cpu"]
        probes["wait"] = _server_wait(deployment) - probes["wait"]
        probes["backend"] = (sum(loadgen.cpu_seconds(pid) for pid in deployment.backend_pids)
                             - probes["backend"])

    result = native.run(case.client, deployment.ports, load, case.directory / name,
                        opened, done)
    d = dict(result["done"])
    wall = d["wall_seconds"]
    delivery = d["delivery_seconds"]
    acked = d["ack_seconds"]
    cpu = probes["cpu"]
    loadgen_cpu = d["cpu_seconds"] + d["python_cpu_seconds"]
    logs = {k: v - logs_before.get(k, 0) for k, v in deployment.log_counts().items()}
    d.update({
        "users": len(users),
        "per_user": per_user,
        "open_failures": result["opened"]["failures"],
        "delivered_per_second": round(d["unique"] / delivery, 1) if delivery else None,
        "published_per_second": round(d["published"] / acked, 1) if acked else None,
        "server_cpu_seconds": round(cpu, 3),
        "server_cpu_share": round(cpu / wall, 3) if wall else None,
        "server_runqueue_wait_share": round(probes["wait"] / wall, 3) if wall else None,
        "backend_cpu_share": round(probes["backend"] / wall, 3) if wall else None,
        "delivered_per_server_cpu_second": round(d["unique"] / cpu, 1) if cpu else None,
        "loadgen_cpu_seconds": round(loadgen_cpu, 3),
        "delivered_per_loadgen_cpu_second": round(d["unique"] / loadgen_cpu, 1)
        if loadgen_cpu else None,
        "published_per_loadgen_cpu_second": round(d["published"] / loadgen_cpu, 1)
        if loadgen_cpu else None,
        "loadgen_cpu_share": round(loadgen_cpu / wall, 3) if wall else None,
        "loadgen_runqueue_wait_share": round(d["wait_seconds"] / wall, 3) if wall else None,
        "logs": logs,
    })
    return d


def fanout(deployment: Deployment, case: Case, run: int) -> dict[str, Any]:
    s = case.sizes
    users = [f"fan{run}-{i}" for i in range(s.fan_users)]
    load = native.Load(users, [], publish=_publish_mode(deployment, False),
                       publishers=s.publishers, depth=s.depth, seconds=s.fan_seconds,
                       drain=s.drain, concurrency=s.concurrency)
    return _stream_case(deployment, case, "fanout", users, s.fan_per_user, load)


def latency(deployment: Deployment, case: Case, run: int) -> dict[str, Any]:
    s = case.sizes
    users = [f"lat{run}-{i}" for i in range(s.lat_users)]
    load = native.Load(users, [], publish=_publish_mode(deployment, False),
                       publishers=s.publishers, rate=s.lat_rate, seconds=s.lat_seconds,
                       drain=s.drain, latency=True, concurrency=s.concurrency)
    result = _stream_case(deployment, case, "latency", users, s.lat_per_user, load)
    result["target_deliveries_per_second"] = s.lat_rate * s.lat_per_user
    return result


def ingest(deployment: Deployment, case: Case, run: int) -> dict[str, Any]:
    s = case.sizes
    users = [f"ing{run}-{i}" for i in range(s.ingest_users)]
    load = native.Load(users, [], publish=_publish_mode(deployment, False),
                       publishers=s.publishers, depth=s.depth, seconds=s.ingest_seconds,
                       drain=s.drain, concurrency=s.concurrency)
    return _stream_case(deployment, case, "ingest", users, 1, load)


def bulk(deployment: Deployment, case: Case, run: int) -> dict[str, Any]:
    s = case.sizes
    users = [f"bulk{run}-{i}" for i in range(s.ingest_users)]
    load = native.Load(users, [], publish=_publish_mode(deployment, True), batch=s.batch,
                       publishers=s.publishers, depth=s.bulk_depth, seconds=s.ingest_seconds,
                       drain=s.drain, concurrency=s.concurrency)
    return _stream_case(deployment, case, "bulk", users, 1, load)
