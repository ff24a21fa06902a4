"""Benchmark the service against the naive FastAPI + sse-starlette baseline.

One command starts every implementation in turn, pinned to one core, drives
it from this process pinned to the other core, prints a table and writes the
raw numbers to ``benchmarks/results/<timestamp>.json``:

    python benchmarks/run.py            # full run, a few minutes
    python benchmarks/run.py --quick    # smoke run, under a minute

Implementations:

* ``ours``: ``python -m sse_service serve`` with the memory backend;
* ``naive``: ``benchmarks/naive_app.py``;
* ``redis``: two replicas of the service with the Redis backend and a
  throwaway ``redis-server``, all three pinned to the same single core;
  streams are split evenly between the replicas and deliveries alternate
  between them.  Skipped when ``sse_service.broker_redis`` is not there.

Every phase runs against freshly started servers, and the implementations
take turns phase by phase, so background load drifts over all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import uvloop

import loadgen
from loadgen import Target

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SECRET = loadgen.DEFAULT_SECRET
IMPLEMENTATIONS = ("ours", "naive", "redis")
LABELS = {"ours": "ours (memory)", "naive": "naive", "redis": "ours (redis, 2 replicas)"}


@dataclass(frozen=True)
class Sizes:
    idle: tuple[int, ...] = (1000, 10_000)
    idle_per_user: int = 1
    concurrency: int = 200
    users: int = 100
    per_user: int = 10
    saturate_seconds: float = 10.0
    batch: int = 100
    publishers: int = 8
    latency_rate: float = 200.0
    latency_seconds: float = 10.0
    latency_publishers: int = 4
    drain_timeout: float = 30.0


FULL = Sizes()
QUICK = Sizes(idle=(200, 1000), users=20, saturate_seconds=3.0, latency_rate=100.0,
              latency_seconds=3.0, drain_timeout=10.0)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((loadgen.LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    """The processes of one implementation: the servers clients talk to, and backends."""

    servers: list[Process]
    backends: list[Process] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        return [Target(s.port, s.pid) for s in self.servers]

    @property
    def backend_pids(self) -> list[int]:
        return [b.pid for b in self.backends]

    def stop(self) -> None:
        for process in self.servers:
            process.stop()
        for process in self.backends:
            process.stop()

    def log_counts(self) -> dict[str, int]:
        text = "".join(s.log_text() for s in self.servers)
        return {
            "slow_consumer": text.count("slow_consumer"),
            "tracebacks": text.count("Traceback"),
            "errors": sum(1 for line in text.splitlines() if " ERROR " in line),
        }


@dataclass
class Launcher:
    server_cpu: int | None
    logs: Path
    queue_size: int | None = None
    max_connections: int = 10_000
    redis_query: str = ""
    started: int = 0

    def _pin(self, argv: list[str]) -> list[str]:
        if self.server_cpu is None:
            return argv
        return ["taskset", "-c", str(self.server_cpu), *argv]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Process:
        self.started += 1
        log = self.logs / f"{self.started:02d}-{name}-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(self._pin(argv), stdout=out, stderr=subprocess.STDOUT,
                                       env=env, cwd=ROOT, process_group=0)
        return Process(name, process, log, port)

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SSE_") and k not in ("APP_API_TOKEN", "BETTER_AUTH_SECRET")}
        env.update({"SSE_JWT_SECRET": SECRET, "SSE_LOG_LEVEL": "info",
                    "SSE_DRAIN_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def ours(self, connections: int, **extra: str) -> Process:
        port = free_port()
        settings = dict(extra)
        if connections > self.max_connections:
            settings["SSE_MAX_CONNECTIONS"] = str(connections + 100)
        if self.queue_size is not None:
            settings["SSE_QUEUE_SIZE"] = str(self.queue_size)
        argv = [sys.executable, "-m", "sse_service", "serve", "--host", loadgen.LOOPBACK,
                "--port", str(port)]
        return _healthy(self._spawn("ours", argv, self._env(**settings), port))

    def naive(self) -> Process:
        port = free_port()
        argv = [sys.executable, str(HERE / "naive_app.py"), "--port", str(port)]
        return _healthy(self._spawn("naive", argv, self._env(), port))

    def redis_server(self) -> Process:
        port = free_port()
        binary = shutil.which("redis-server") or "redis-server"
        argv = [binary, "--port", str(port), "--bind", loadgen.LOOPBACK, "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        process = self._spawn("redis", argv, self._env(), port)
        _wait_redis(process)
        return process

    def deploy(self, implementation: str, connections: int) -> Deployment:
        if implementation == "ours":
            return Deployment([self.ours(connections)])
        if implementation == "naive":
            return Deployment([self.naive()])
        redis = self.redis_server()
        deployment = Deployment([], [redis])
        try:
            url = f"redis://{loadgen.LOOPBACK}:{redis.port}/0"
            if self.redis_query:
                url += "?" + self.redis_query.lstrip("?")
            for _ in range(2):
                deployment.servers.append(self.ours(
                    -(-connections // 2), SSE_BACKEND="redis", SSE_REDIS_URL=url
                ))
        except BaseException:
            deployment.stop()
            raise
        return deployment


def _healthy(process: Process, timeout: float = 30.0) -> Process:
    deadline = time.monotonic() + timeout
    url = f"http://{loadgen.LOOPBACK}:{process.port}/healthz"
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.process.returncode}:\n"
                               f"{process.log_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.stop()
    raise RuntimeError(f"{process.name} did not become healthy:\n{process.log_text()[-3000:]}")


def _wait_redis(process: Process, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{process.log_text()[-2000:]}")
        try:
            with socket.create_connection((loadgen.LOOPBACK, process.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    process.stop()
    raise RuntimeError("redis-server did not answer PING")


@contextlib.contextmanager
def deployed(launcher: Launcher, implementation: str, connections: int) -> Iterator[Deployment]:
    deployment = launcher.deploy(implementation, connections)
    try:
        yield deployment
    finally:
        deployment.stop()


# -- phases -----------------------------------------------------------------------------------


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def phase_open(launcher: Launcher, implementation: str, sizes: Sizes, n: int) -> dict[str, Any]:
    with deployed(launcher, implementation, n) as deployment:
        load = _loadavg()
        result = uvloop.run(loadgen.open_idle(
            deployment.targets, connections=n, per_user=sizes.idle_per_user,
            concurrency=sizes.concurrency, secret=SECRET,
        ))
        result["loadavg"] = load
    result["logs"] = deployment.log_counts()
    return result


def phase_stream(launcher: Launcher, implementation: str, sizes: Sizes) -> dict[str, Any]:
    streams = sizes.users * sizes.per_user
    with deployed(launcher, implementation, streams) as deployment:
        load = _loadavg()
        lat = uvloop.run(loadgen.latency(
            deployment.targets, users=sizes.users, per_user=sizes.per_user,
            seconds=sizes.latency_seconds, rate=sizes.latency_rate,
            workers=sizes.latency_publishers, concurrency=sizes.concurrency, secret=SECRET,
            backend_pids=deployment.backend_pids,
        ))
        lat["loadavg"] = load
        lat["logs"] = deployment.log_counts()
        load = _loadavg()
        sat = uvloop.run(loadgen.saturate(
            deployment.targets, users=sizes.users, per_user=sizes.per_user,
            seconds=sizes.saturate_seconds, batch=sizes.batch, workers=sizes.publishers,
            concurrency=sizes.concurrency, secret=SECRET, drain_timeout=sizes.drain_timeout,
            backend_pids=deployment.backend_pids,
        ))
        sat["loadavg"] = load
    counts = deployment.log_counts()
    sat["logs"] = {k: v - lat["logs"].get(k, 0) for k, v in counts.items()}
    return {"latency": lat, "saturate": sat}


# -- report -----------------------------------------------------------------------------------

#: How a row combines repeated runs: performance takes the median, problems add up.
MEDIAN, TOTAL, WORST = "median", "total", "worst"


@dataclass(frozen=True)
class Row:
    label: str
    path: tuple[str, ...]
    combine: str = MEDIAN
    #: "min:x" / "max:x": what ours/naive must reach; None: no target.
    target: str | None = None


def _get(result: Any, *path: str) -> Any:
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _failed(result: dict[str, Any], phase: str) -> int | None:
    failures = _get(result, phase, "failures")
    return None if failures is None else sum(failures.values())


def combined(runs: Sequence[dict[str, Any]], row: Row) -> float | None:
    values = []
    for run in runs:
        if row.path[-1] == "#failed":
            value = _failed(run, row.path[0])
        else:
            value = _get(run, *row.path)
        if isinstance(value, int | float):
            values.append(float(value))
    if not values:
        return None
    if row.combine == TOTAL:
        return sum(values)
    if row.combine == WORST:
        return max(values)
    return statistics.median(values)


def rows(sizes: Sizes) -> list[Row]:
    out: list[Row] = []
    for n in sizes.idle:
        o = f"open_{n}"
        out += [
            Row(f"memory/idle stream @{n:,}: RSS bytes",
                (o, "memory_per_connection_bytes", "rss"), target="max:0.5"),
            Row("    PSS bytes", (o, "memory_per_connection_bytes", "pss")),
            Row("    USS bytes", (o, "memory_per_connection_bytes", "uss")),
            Row(f"accept rate @{n:,}: streams/s", (o, "accept_per_second"), target="min:2"),
            Row("    streams per server CPU second", (o, "accept_per_server_cpu_second")),
            Row("    server CPU s while opening", (o, "server_cpu_seconds")),
            Row("    server waiting for a CPU s", (o, "server_runqueue_wait_seconds")),
            Row("    streams refused or failed (all runs)", (o, "#failed"), TOTAL),
        ]
    sat = ("stream", "saturate")
    lat = ("stream", "latency")
    out += [
        Row(f"saturation: delivered events/s ({sizes.users}x{sizes.per_user} streams)",
            (*sat, "delivered_per_second"), target="min:3"),
        Row("    delivered per server CPU second", (*sat, "delivered_per_server_cpu_second")),
        Row("    same, counting redis-server CPU",
            (*sat, "delivered_per_cpu_second_with_backend")),
        Row("    published (acked) events/s", (*sat, "published_per_second")),
        Row("    events delivered (all runs)", (*sat, "received"), TOTAL),
        Row("    missing (all runs)", (*sat, "missing"), TOTAL),
        Row("    out of order (all runs)", (*sat, "out_of_order"), TOTAL),
        Row("    publish failures (all runs)", (*sat, "publish_failures"), TOTAL),
        Row("    disconnected streams (all runs)", (*sat, "disconnected"), TOTAL),
        Row("    slow_consumer log lines (all runs)", (*sat, "logs", "slow_consumer"), TOTAL),
        Row("    drain after publishing s (worst)", (*sat, "drain_seconds"), WORST),
        Row("    server CPU share", (*sat, "server_cpu_share")),
        Row("    server waiting-for-CPU share", (*sat, "server_runqueue_wait_share")),
        Row("    redis-server CPU share", (*sat, "backend_cpu_share")),
        Row("    load generator CPU share", (*sat, "loadgen_cpu_share")),
        Row("    load generator waiting-for-CPU share", (*sat, "loadgen_runqueue_wait_share")),
        Row(f"latency @{sizes.latency_rate:g} events/s: p50 ms", (*lat, "latency_ms", "p50")),
        Row("    p90 ms", (*lat, "latency_ms", "p90")),
        Row("    p99 ms", (*lat, "latency_ms", "p99")),
        Row("    max ms (worst)", (*lat, "latency_ms", "max"), WORST),
        Row("    published (acked) events/s", (*lat, "published_per_second")),
        Row("    sends behind schedule (all runs)", (*lat, "late_sends"), TOTAL),
        Row("    samples (all runs)", (*lat, "samples"), TOTAL),
        Row("    missing (all runs)", (*lat, "missing"), TOTAL),
        Row("    out of order (all runs)", (*lat, "out_of_order"), TOTAL),
        Row("    server CPU share", (*lat, "server_cpu_share")),
    ]
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"


def summary(runs: dict[str, list[dict[str, Any]]], sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Per implementation, each row's combined value (what the table shows)."""
    return {name: {row.label.strip(): combined(r, row) for row in rows(sizes)}
            for name, r in runs.items()}


def table(runs: dict[str, list[dict[str, Any]]], sizes: Sizes) -> str:
    names = [n for n in IMPLEMENTATIONS if n in runs]
    compare = "ours" in runs and "naive" in runs
    header = ["metric", *(LABELS[n] for n in names)]
    if compare:
        header += ["ours/naive", "target"]
    lines: list[list[str]] = []
    for row in rows(sizes):
        values = {n: combined(runs[n], row) for n in names}
        if all(v is None for v in values.values()):
            continue
        line = [row.label, *(_fmt(values[n]) for n in names)]
        if compare:
            ours, naive = values["ours"], values["naive"]
            ratio = ours / naive if ours is not None and naive else None
            line.append("-" if ratio is None or row.combine != MEDIAN else f"{ratio:.2f}x")
            line.append(_verdict(ratio, row.target))
        lines.append(line)
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    render = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                  enumerate(zip(line, widths, strict=True)))
        for line in [header, *lines]
    ]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)


def _verdict(ratio: float | None, target: str | None) -> str:
    if target is None:
        return ""
    kind, _, bound = target.partition(":")
    limit = float(bound)
    text = f"{'<=' if kind == 'max' else '>='}{limit:g}x"
    if ratio is None:
        return text + " ?"
    ok = ratio <= limit if kind == "max" else ratio >= limit
    return f"{text} {'met' if ok else 'MISSED'}"


def problems(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every refused stream, lost or reordered event and disconnect, per run."""
    notes = []
    for name, results in runs.items():
        for number, result in enumerate(results, 1):
            where = f"{LABELS[name]} run {number}"
            for phase, r in result.items():
                if phase.startswith("open_") and r.get("failures"):
                    notes.append(f"{where} {phase}: streams refused or failed: {r['failures']}")
            for phase in ("saturate", "latency"):
                r = _get(result, "stream", phase)
                if not isinstance(r, dict):
                    continue
                found = {k: r[k] for k in ("missing", "out_of_order", "disconnected",
                                           "publish_failures", "non_task_events") if r.get(k)}
                for key in ("open_failures", "publish_errors", "closings"):
                    if r.get(key):
                        found[key] = r[key]
                slow = _get(r, "logs", "slow_consumer")
                if slow:
                    found["slow_consumer_log_lines"] = slow
                if found:
                    notes.append(f"{where} {phase}: {found}")
    return notes


# -- main -------------------------------------------------------------------------------------


def _environment(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(package)
        except Exception:
            return None

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "server_cpu": args.server_cpu,
        "loadgen_cpu": args.loadgen_cpu,
        "pinned": not args.no_pin,
        "loadavg_at_start": _loadavg(),
        "python": sys.version.split()[0],
        "packages": {p: version(p) for p in ("fastapi", "starlette", "sse-starlette", "uvicorn",
                                             "uvloop", "httptools", "PyJWT", "redis")},
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": len(git("status", "--porcelain").splitlines()),
        "queue_size": args.queue_size,
        "redis_query": args.redis_query,
        "repeat": args.repeat,
        "access_log": "on for both implementations (uvicorn's access logger, to a file)",
        "sizes": asdict(sizes),
        "open_files_limit": loadgen.raise_file_limit(),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    parser.add_argument("--repeat", type=int,
                        help="runs of every phase; the table shows medians (default: 3, quick: 1)")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                        help="comma list of: ours, naive, redis")
    parser.add_argument("--phases", default="open,stream",
                        help="comma list of: open (memory + accept), stream (latency + saturation)")
    parser.add_argument("--idle", help="idle stream counts, e.g. 1000,10000")
    parser.add_argument("--idle-per-user", type=int, help="streams per user when idle")
    parser.add_argument("--concurrency", type=int, help="connection attempts in flight")
    parser.add_argument("--users", type=int, help="users in the latency/saturation phases")
    parser.add_argument("--per-user", type=int, help="streams per user there")
    parser.add_argument("--seconds", type=float, help="saturation publishing time")
    parser.add_argument("--batch", type=int, help="entries per bulk delivery")
    parser.add_argument("--publishers", type=int, help="publisher connections (saturation)")
    parser.add_argument("--rate", type=float, help="events/s in the latency phase")
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--queue-size", type=int, help="SSE_QUEUE_SIZE for the service")
    parser.add_argument("--redis-query", default="",
                        help="query string appended to SSE_REDIS_URL, e.g. max_connections=1000")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--output", type=Path, help="JSON path (default results/<time>.json)")
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.idle:
        overrides["idle"] = tuple(int(x) for x in args.idle.split(",") if x)
    for flag, name in (("idle_per_user", "idle_per_user"), ("concurrency", "concurrency"),
                       ("users", "users"), ("per_user", "per_user"),
                       ("seconds", "saturate_seconds"), ("batch", "batch"),
                       ("publishers", "publishers"), ("rate", "latency_rate"),
                       ("latency_seconds", "latency_seconds")):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    return replace(sizes, **overrides)


def _available(names: Sequence[str]) -> list[str]:
    chosen = []
    for name in names:
        if name not in IMPLEMENTATIONS:
            raise SystemExit(f"unknown implementation {name!r}")
        if name == "redis":
            if importlib.util.find_spec("sse_service.broker_redis") is None:
                print("skipping ours (redis, 2 replicas): src/sse_service/broker_redis.py does "
                      "not exist yet", flush=True)
                continue
            if shutil.which("redis-server") is None:
                print("skipping ours (redis, 2 replicas): redis-server is not installed",
                      flush=True)
                continue
        chosen.append(name)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = _sizes(args)
    repeat = args.repeat or (1 if args.quick else 3)
    names = _available([n.strip() for n in args.only.split(",") if n.strip()])
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    cpus = os.cpu_count() or 1
    if not args.no_pin and cpus < 2:
        print("only one CPU: running unpinned", flush=True)
        args.no_pin = True
    if not args.no_pin:
        os.sched_setaffinity(0, {args.loadgen_cpu})
    environment = _environment(args, sizes)
    needed = max([*sizes.idle, sizes.users * sizes.per_user]) + 200
    if environment["open_files_limit"] < needed:
        raise SystemExit(f"open-files limit {environment['open_files_limit']} is below the "
                         f"{needed} streams this run needs; lower --idle")
    logs = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    launcher = Launcher(None if args.no_pin else args.server_cpu, logs, args.queue_size,
                        redis_query=args.redis_query)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    print(f"implementations: {', '.join(LABELS[n] for n in names)}; {repeat} run(s) each; "
          f"server logs in {logs}", flush=True)
    started = time.monotonic()
    for number in range(1, repeat + 1):
        results: dict[str, dict[str, Any]] = {name: {} for name in names}
        for name in names:
            runs[name].append(results[name])

        def say(text: str, number: int = number) -> None:
            print(f"[{time.monotonic() - started:6.1f}s] run {number}/{repeat} {text}",
                  flush=True)

        if "open" in phases:
            for n in sizes.idle:
                for name in names:
                    say(f"{LABELS[name]}: open {n} idle streams")
                    results[name][f"open_{n}"] = phase_open(launcher, name, sizes, n)
        if "stream" in phases:
            for name in names:
                say(f"{LABELS[name]}: latency at {sizes.latency_rate:g}/s, "
                    f"then saturation for {sizes.saturate_seconds:g}s")
                results[name]["stream"] = phase_stream(launcher, name, sizes)
    environment["seconds"] = round(time.monotonic() - started, 1)
    environment["logs"] = str(logs)
    environment["loadavg_at_end"] = _loadavg()
    print()
    print(table(runs, sizes))
    notes = problems(runs)
    print()
    print("problems:" if notes else "no stream refused, no event lost or out of order, "
          "no disconnect")
    for note in notes:
        print("  " + note)
    print(f"\nload average at start {environment['loadavg_at_start']}, at end "
          f"{environment['loadavg_at_end']}; run took {environment['seconds']}s")
    output = args.output or RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {"environment": environment, "summary": summary(runs, sizes), "runs": runs}
    output.write_text(json.dumps(document, indent=2))
    print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
