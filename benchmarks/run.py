"""Benchmark the service side by side with a naive FastAPI + sse-starlette app,
nginx + Nchan (the C server one would deploy instead) and, when present, the
Redis variant of the service.

One command starts every implementation in turn, pinned to one core (CPU 0),
drives it with a C load generator pinned to the other core (CPU 1), prints a
table and writes the raw numbers to ``benchmarks/results/<timestamp>.json``:

    python benchmarks/run.py            # full run, under 10 minutes
    python benchmarks/run.py --quick    # smoke run, under 2 minutes

Implementations (``--only``):

* ``ours``: ``python -m sse_service serve`` with the memory backend;
* ``naive``: ``benchmarks/naive_app.py``;
* ``nchan``: nginx with the Nchan module, one worker; skipped when
  nginx or the module is not installed;
* ``redis``: two replicas of the service with the Redis backend and a
  throwaway ``redis-server``, all three on the server core; skipped when
  ``redis-server`` or ``sse_service.broker_redis`` is missing;
* ``ceiling``: ``sseecho.c``, a trivial C server, to show the load
  generator's own limit in every case.

Every case runs against freshly started servers, and the implementations
take turns case by case, so background load drifts over all of them alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cases
import loadgen
import native
import report
import servers
from cases import Sizes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
IMPLEMENTATIONS = ("ours", "naive", "nchan", "redis", "ceiling")
CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "idle": cases.idle,
    "fanout": cases.fanout,
    "latency": cases.latency,
    "ingest": cases.ingest,
    "bulk": cases.bulk,
}
#: Bulk deliveries are daprd's; Nchan and the naive app are not measured with them.
BULK_ONLY = ("ours", "redis", "ceiling")
FULL = Sizes()
QUICK = Sizes(idle=1000, fan_users=4, fan_seconds=2.0, lat_seconds=2.0, ingest_users=200,
              ingest_seconds=2.0, drain=10.0)
NOTES = """\
notes:
  * nginx + Nchan has no authentication: its streams are opened by URL (/sub/<user>) with no
    token, and its publisher location takes the client-facing JSON rather than daprd's
    CloudEvent. The service and the naive app verify an HS256 JWT per stream and unwrap the
    CloudEvent of every delivery.
  * client ceiling: the same load generator against sseecho, a trivial C server. The load
    generator's CPU is shown under every number; near 100% of a core it would be the limit.
  * servers on CPU {server}, load generator on CPU {client}; these are relative numbers from one
    machine over loopback, not capacity figures."""


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _connections(case: str, sizes: Sizes) -> int:
    return {
        "idle": sizes.idle + sizes.warmup,
        "fanout": sizes.fan_users * sizes.fan_per_user,
        "latency": sizes.lat_users * sizes.lat_per_user,
    }.get(case, sizes.ingest_users)


def run_case(launcher: servers.Launcher, name: str, case: str, context: cases.Case,
             number: int) -> dict[str, Any]:
    deployment = launcher.deploy(name, _connections(case, context.sizes))
    try:
        load = _loadavg()
        result = CASES[case](deployment, context, number)
        result["loadavg"] = load
    finally:
        deployment.stop()
    result.setdefault("logs", deployment.log_counts())
    return result


def _environment(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(package)
        except Exception:
            return None

    def output(*argv: str, cwd: Path = ROOT) -> str:
        try:
            done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    nginx = servers.nginx_binary()
    # The service may be imported from elsewhere than this tree (PYTHONPATH).
    spec = importlib.util.find_spec("sse_service")
    service = Path(spec.origin).parent if spec is not None and spec.origin else ROOT
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
        "nginx": output(nginx, "-v") if nginx else None,
        "nchan": output("dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan") or None,
        "gcc": output("gcc", "-dumpfullversion"),
        "commit": output("git", "rev-parse", "HEAD"),
        "dirty_files": len(output("git", "status", "--porcelain").splitlines()),
        "service_source": str(service),
        "service_commit": output("git", "rev-parse", "HEAD", cwd=service),
        "service_dirty_files": len(output("git", "status", "--porcelain", "--", ".",
                                          cwd=service).splitlines()),
        "queue_size": args.queue_size,
        "redis_query": args.redis_query,
        "repeat": args.repeat,
        "access_log": "on everywhere (uvicorn's access logger to a file; nginx access_log)",
        "sizes": asdict(sizes),
        "open_files_limit": loadgen.raise_file_limit(),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 minutes)")
    parser.add_argument("--repeat", type=int,
                        help="runs of every case; the table shows medians (default: 2, quick: 1)")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                        help="comma list of: " + ", ".join(IMPLEMENTATIONS))
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma list of: " + ", ".join(CASES))
    parser.add_argument("--idle", type=int, help="idle streams (memory and accept rate)")
    parser.add_argument("--concurrency", type=int, help="connection attempts in flight")
    parser.add_argument("--fan-users", type=int, help="users in the saturation case")
    parser.add_argument("--fan-per-user", type=int, help="streams per user there")
    parser.add_argument("--seconds", type=float, help="publishing time of every case")
    parser.add_argument("--rate", type=float, help="events/s in the latency case")
    parser.add_argument("--ingest-users", type=int, help="users (one stream each) when ingesting")
    parser.add_argument("--batch", type=int, help="entries per bulk delivery")
    parser.add_argument("--publishers", type=int, help="publisher connections")
    parser.add_argument("--depth", type=int, help="requests in flight per publisher connection")
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
    for flag, names in (("idle", ("idle",)), ("concurrency", ("concurrency",)),
                        ("fan_users", ("fan_users",)), ("fan_per_user", ("fan_per_user",)),
                        ("seconds", ("fan_seconds", "lat_seconds", "ingest_seconds")),
                        ("rate", ("lat_rate",)), ("ingest_users", ("ingest_users",)),
                        ("batch", ("batch",)), ("publishers", ("publishers",)),
                        ("depth", ("depth",))):
        value = getattr(args, flag)
        if value is not None:
            overrides.update(dict.fromkeys(names, value))
    return replace(sizes, **overrides)


def _available(names: Sequence[str]) -> list[str]:
    chosen = []
    for name in names:
        if name not in IMPLEMENTATIONS:
            raise SystemExit(f"unknown implementation {name!r}")
        if name == "redis":
            if importlib.util.find_spec("sse_service.broker_redis") is None:
                print("skipping ours (redis, 2 replicas): sse_service.broker_redis is missing",
                      flush=True)
                continue
            if shutil.which("redis-server") is None:
                print("skipping ours (redis, 2 replicas): redis-server is not installed",
                      flush=True)
                continue
        if name == "nchan" and (servers.nginx_binary() is None or servers.nchan_module() is None):
            print("skipping nginx + Nchan: install the Debian packages nginx and "
                  "libnginx-mod-nchan to compare with it", flush=True)
            continue
        chosen.append(name)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = _sizes(args)
    args.repeat = repeat = args.repeat or (1 if args.quick else 2)
    names = _available([n.strip() for n in args.only.split(",") if n.strip()])
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in chosen:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}")
    if not args.no_pin and (os.cpu_count() or 1) < 2:
        print("only one CPU: running unpinned", flush=True)
        args.no_pin = True
    if not args.no_pin:
        os.sched_setaffinity(0, {args.loadgen_cpu})
    environment = _environment(args, sizes)
    needed = sizes.idle + sizes.warmup + 300
    if environment["open_files_limit"] < needed:
        raise SystemExit(f"open-files limit {environment['open_files_limit']} is below the "
                         f"{needed} this run needs; lower --idle")
    work = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    binaries = native.build(work)
    launcher = servers.Launcher(None if args.no_pin else args.server_cpu, work, binaries,
                                args.queue_size, redis_query=args.redis_query,
                                per_user=sizes.fan_per_user)
    context = cases.Case(binaries["sseload"], work / "client", sizes,
                         loadgen.Tokens(loadgen.DEFAULT_SECRET))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    print(f"implementations: {', '.join(report.LABELS[n] for n in names)}; {repeat} run(s) "
          f"each; server logs and the compiled load generator in {work}", flush=True)
    started = time.monotonic()
    for number in range(1, repeat + 1):
        results: dict[str, dict[str, Any]] = {name: {} for name in names}
        for name in names:
            runs[name].append(results[name])
        for case in chosen:
            for name in names:
                if case == "bulk" and name not in BULK_ONLY:
                    continue
                print(f"[{time.monotonic() - started:6.1f}s] run {number}/{repeat} "
                      f"{report.LABELS[name]}: {case}", flush=True)
                try:
                    results[name][case] = run_case(launcher, name, case, context, number)
                except Exception as exc:
                    traceback.print_exc()
                    results[name][case] = {"error": f"{type(exc).__name__}: {exc}"}
    environment["seconds"] = round(time.monotonic() - started, 1)
    environment["loadavg_at_end"] = _loadavg()
    print()
    print(report.table(runs, sizes, names))
    notes = report.problems(runs)
    print()
    print("problems:" if notes else "no stream refused, no event lost, reordered or duplicated, "
          "no disconnect")
    for note in notes:
        print("  " + note)
    limit = report.ceiling(runs)
    if limit:
        print()
        print(limit)
    print()
    print(NOTES.format(server="-" if args.no_pin else args.server_cpu,
                       client="-" if args.no_pin else args.loadgen_cpu))
    print(f"\nload average at start {environment['loadavg_at_start']}, at end "
          f"{environment['loadavg_at_end']}; run took {environment['seconds']}s")
    output = args.output or RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {"environment": environment, "summary": report.summary(runs, sizes),
                "runs": runs}
    output.write_text(json.dumps(document, indent=2))
    print(f"results written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
