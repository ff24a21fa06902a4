"""The side-by-side table, the list of problems and the JSON summary.

A row reads one value per run of an implementation and combines the runs:
performance rows take the median, problem counts add up (*all runs*), worst
cases take the maximum, so a single lost event is never hidden by a median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cases import Sizes

__all__ = ["LABELS", "Row", "ceiling", "problems", "rows", "summary", "table"]

LABELS = {
    "ours": "ours (memory)",
    "naive": "naive",
    "nchan": "nginx + Nchan",
    "redis": "ours (redis, 2 replicas)",
    "ceiling": "client ceiling (sseecho)",
}
MEDIAN, TOTAL, WORST = "median", "total", "worst"
Path = tuple[str, ...]


@dataclass(frozen=True)
class Row:
    label: str
    paths: tuple[Path, ...]
    combine: str = MEDIAN
    #: "num": one value; "cpu": seconds and share of a core; "counts": a / b / c;
    #: "shares": a / b as percentages.
    kind: str = "num"
    #: "min:x" / "max:x": what ours/naive must reach; None: no target.
    target: str | None = None
    #: Whether the ours/other ratio columns mean anything for this row.
    ratio: bool = False
    #: "min:x" / "max:x": the absolute goal for ours on one core at the full run's
    #: sizes (docs/performance.md); None: no goal.
    goal: str | None = None


def _get(result: Any, path: Path) -> Any:
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, dict) and path[-1] in ("failures", "open_failures"):
        return sum(value.values())
    return value


def combined(runs: Sequence[dict[str, Any]], path: Path, combine: str) -> float | None:
    values = [float(v) for v in (_get(run, path) for run in runs) if isinstance(v, int | float)]
    if not values:
        return None
    if combine == TOTAL:
        return sum(values)
    if combine == WORST:
        return max(values)
    return statistics.median(values)


def _cpu(case: str, per_cpu: str) -> list[Row]:
    what = {"opened": "streams opened", "delivered": "events read",
            "published": "events published"}[per_cpu]
    return [
        Row("    load generator CPU s (% of a core)",
            ((case, "loadgen_cpu_seconds"), (case, "loadgen_cpu_share")), kind="cpu"),
        Row(f"    {what} per load generator CPU second",
            ((case, f"{per_cpu}_per_loadgen_cpu_second"),)),
        Row("    waiting for a CPU: server / load generator (share of the time)",
            ((case, "server_runqueue_wait_share"), (case, "loadgen_runqueue_wait_share")),
            kind="shares"),
    ]


def _checks(case: str) -> list[Row]:
    return [
        Row("    lost / reordered / duplicated (all runs)",
            ((case, "missing"), (case, "out_of_order"), (case, "duplicates")), TOTAL, "counts"),
        Row("    publish failures / disconnected / refused (all runs)",
            ((case, "publish_failures"), (case, "disconnected"), (case, "open_failures")),
            TOTAL, "counts"),
    ]


def rows(sizes: Sizes) -> list[Row]:
    fan = f"{sizes.fan_users} users x {sizes.fan_per_user} streams"
    lat = (f"{sizes.lat_rate * sizes.lat_per_user:,.0f} deliveries/s ({sizes.lat_users} users x "
           f"{sizes.lat_per_user} streams, {sizes.lat_rate:,.0f} events/s)")
    return [
        Row(f"memory per idle stream, {sizes.idle:,} streams: RSS bytes",
            (("idle", "memory_per_connection_bytes", "rss"),), target="max:0.5", ratio=True,
            goal="max:8000"),
        Row("    PSS bytes", (("idle", "memory_per_connection_bytes", "pss"),), ratio=True),
        Row("    USS bytes", (("idle", "memory_per_connection_bytes", "uss"),), ratio=True),
        Row("streams accepted per second (a distinct token per stream)",
            (("idle", "accept_per_second"),), target="min:2", ratio=True, goal="min:10000"),
        Row("    accepted per server CPU second", (("idle", "accept_per_server_cpu_second"),),
            ratio=True),
        Row("    refused or failed (all runs)", (("idle", "failures"),), TOTAL),
        *_cpu("idle", "opened"),
        Row(f"delivered events/s at saturation, {fan}, 1 CloudEvent per POST",
            (("fanout", "delivered_per_second"),), target="min:3", ratio=True,
            goal="min:150000"),
        Row("    published (acked) events/s", (("fanout", "published_per_second"),), ratio=True),
        Row("    delivered per server CPU second",
            (("fanout", "delivered_per_server_cpu_second"),), ratio=True),
        Row("    server CPU share", (("fanout", "server_cpu_share"),)),
        Row("    redis-server CPU share", (("fanout", "backend_cpu_share"),)),
        Row("    slow_consumer log lines (all runs)", (("fanout", "logs", "slow_consumer"),),
            TOTAL),
        *_checks("fanout"),
        *_cpu("fanout", "delivered"),
        Row(f"p99 publish-to-receive ms at {lat}", (("latency", "latency_ms", "p99"),),
            ratio=True, goal="max:0.5"),
        Row("    p50 ms", (("latency", "latency_ms", "p50"),), ratio=True),
        Row("    p90 ms", (("latency", "latency_ms", "p90"),)),
        Row("    max ms (worst)", (("latency", "latency_ms", "max"),), WORST),
        Row("    achieved deliveries/s", (("latency", "delivered_per_second"),)),
        Row("    sends behind schedule (all runs)", (("latency", "late_sends"),), TOTAL),
        Row("    server CPU share", (("latency", "server_cpu_share"),)),
        *_checks("latency"),
        *_cpu("latency", "delivered"),
        Row(f"events/s ingested, {sizes.ingest_users:,} users x 1 stream, 1 CloudEvent per POST",
            (("ingest", "published_per_second"),), ratio=True, goal="min:15000"),
        Row("    delivered events/s", (("ingest", "delivered_per_second"),), ratio=True),
        Row("    server CPU share", (("ingest", "server_cpu_share"),)),
        *_checks("ingest"),
        *_cpu("ingest", "published"),
        Row(f"events/s ingested, {sizes.ingest_users:,} users x 1 stream, bulk deliveries of "
            f"{sizes.batch} (ours only)", (("bulk", "published_per_second"),), goal="min:60000"),
        Row("    delivered events/s", (("bulk", "delivered_per_second"),)),
        Row("    server CPU share", (("bulk", "server_cpu_share"),)),
        *_checks("bulk"),
        *_cpu("bulk", "published"),
    ]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"


def cell(runs: Sequence[dict[str, Any]], row: Row) -> tuple[str, float | None]:
    """The text of one cell and the value the ratio columns use."""
    values = [combined(runs, path, row.combine) for path in row.paths]
    if row.kind == "cpu":
        seconds, share = values
        if seconds is None:
            return "-", None
        return f"{seconds:.2f} s ({share or 0:.0%})", None
    if row.kind == "shares":
        if all(v is None for v in values):
            return "-", None
        return " / ".join("-" if v is None else f"{v:.0%}" for v in values), None
    if row.kind == "counts":
        if all(v is None for v in values):
            return "-", None
        return " / ".join(_fmt(v or 0) for v in values), None
    return _fmt(values[0]), values[0]


def table(runs: dict[str, list[dict[str, Any]]], sizes: Sizes, names: Sequence[str]) -> str:
    others = [n for n in ("naive", "nchan") if n in runs and "ours" in runs]
    header = ["metric", *(LABELS[n] for n in names), *(f"ours/{n}" for n in others)]
    if "naive" in others:
        header.append("target (vs naive)")
    if "ours" in names:
        header.append("goal (ours)")
    lines: list[list[str]] = []
    for row in rows(sizes):
        cells = {n: cell(runs[n], row) for n in names}
        if all(text == "-" for text, _ in cells.values()):
            continue
        line = [row.label, *(cells[n][0] for n in names)]
        ours = cells["ours"][1] if "ours" in cells else None
        for other in others:
            value = cells[other][1]
            ratio = ours / value if row.ratio and ours is not None and value else None
            line.append("" if ratio is None else f"{ratio:.2f}x")
        if "naive" in others:
            value = cells["naive"][1]
            line.append(_verdict(ours / value if ours is not None and value else None,
                                 row.target))
        if "ours" in names:
            line.append(_verdict(ours, row.goal, unit=""))
        lines.append(line)
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths, strict=True)))
              for line in [header, *lines]]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)


def _verdict(value: float | None, bound: str | None, unit: str = "x") -> str:
    """``value`` against ``bound`` ("min:x" / "max:x"): ``met``, or ``MISSED``, with the
    share of an absolute goal (``unit=""``) reached."""
    if bound is None:
        return ""
    kind, _, number = bound.partition(":")
    limit = float(number)
    text = f"{'<=' if kind == 'max' else '>='}{limit:,g}{unit}"
    if value is None:
        return text + " ?"
    if (value <= limit) if kind == "max" else (value >= limit):
        return text + " met"
    return f"{text} MISSED" + ("" if unit else f" ({value / limit:.0%})")


CHECKED = ("missing", "out_of_order", "duplicates", "publish_failures", "disconnected")


def problems(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every refused stream, lost, reordered or duplicated event and disconnect, per run."""
    notes = []
    for name, results in runs.items():
        for number, result in enumerate(results, 1):
            where = f"{LABELS[name]} run {number}"
            for case, r in result.items():
                if not isinstance(r, dict):
                    continue
                if "error" in r:
                    notes.append(f"{where} {case}: failed: {r['error']}")
                    continue
                found = {k: r[k] for k in CHECKED if r.get(k)}
                for key in ("failures", "open_failures", "publish_errors", "closings"):
                    if r.get(key):
                        found[key] = r[key]
                for key in ("slow_consumer", "tracebacks", "errors"):
                    if r.get("logs", {}).get(key):
                        found[f"{key}_log_lines"] = r["logs"][key]
                if found:
                    notes.append(f"{where} {case}: {found}")
    return notes


def ceiling(runs: dict[str, list[dict[str, Any]]]) -> str | None:
    """The load generator's own limit, from its runs against the trivial server."""
    if "ceiling" not in runs:
        return None
    parts = []
    for case, key, what in (("idle", "opened", "opens {} streams"),
                            ("fanout", "delivered", "reads {} events (fan-out)"),
                            ("ingest", "published", "publishes {} single CloudEvents"),
                            ("bulk", "published", "publishes {} events in bulk deliveries")):
        value = combined(runs["ceiling"], (case, f"{key}_per_loadgen_cpu_second"), MEDIAN)
        if value is not None:
            parts.append(what.format(f"{value:,.0f}"))
    if not parts:
        return None
    return ("load generator ceiling, per second of its own core (runs against sseecho): "
            + ", ".join(parts))


def summary(runs: dict[str, list[dict[str, Any]]], sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Per implementation, each row's cell as the table shows it."""
    return {name: {row.label.strip(): cell(r, row)[0] for row in rows(sizes)}
            for name, r in runs.items()}
