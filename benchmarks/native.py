"""The C side of the load generator: compiling it and driving one run of it.

``sseload.c`` and ``sseecho.c`` are compiled with gcc at the start of every
benchmark run into that run's temporary directory; no binary is kept.

A run of ``sseload`` opens the streams of a :class:`Load`, reports
``{"stage": "opened"}``, waits for the go-ahead (the caller probes the server
meanwhile), publishes, drains, reports ``{"stage": "done"}`` and waits again
before closing the streams.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Load", "build", "run"]

HERE = Path(__file__).resolve().parent
SOURCES = ("sseload", "sseecho")


def build(directory: Path) -> dict[str, Path]:
    """Compile the C programs into ``directory``; returns name -> binary."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("the load generator is C: install gcc (or cc) first")
    binaries = {}
    for name in SOURCES:
        binary = directory / name
        argv = [gcc, "-O2", "-Wall", "-o", str(binary), str(HERE / f"{name}.c")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"compiling {name}.c failed:\n{done.stderr}")
        binaries[name] = binary
    return binaries


@dataclass
class Load:
    """What one run of ``sseload`` does.

    ``streams`` are ``(user index, target index, path, bearer token or "-")``.
    """

    users: Sequence[str]
    streams: Sequence[tuple[int, int, str, str]]
    publish: str = "none"
    batch: int = 50
    publishers: int = 4
    depth: int = 16
    rate: float = 0.0
    seconds: float = 0.0
    drain: float = 30.0
    latency: bool = False
    concurrency: int = 200
    open_timeout: float = 120.0

    def argv(self, binary: Path, ports: Sequence[int], directory: Path) -> list[str]:
        users = directory / "users.txt"
        streams = directory / "streams.txt"
        users.write_text("".join(f"{u}\n" for u in self.users))
        streams.write_text("".join(f"{u} {t} {p} {k}\n" for u, t, p, k in self.streams))
        argv = [str(binary), "--users", str(users), "--streams", str(streams), "--pause",
                "--concurrency", str(self.concurrency), "--open-timeout", str(self.open_timeout),
                "--publish", self.publish, "--batch", str(self.batch),
                "--publishers", str(self.publishers), "--depth", str(self.depth),
                "--rate", str(self.rate), "--seconds", str(self.seconds),
                "--drain", str(self.drain)]
        for port in ports:
            argv += ["--target", str(port)]
        if self.latency:
            argv.append("--latency")
        return argv

    @property
    def time_bound(self) -> float:
        """No run may take longer: opening, publishing, the acks, the drain, and slack."""
        return self.open_timeout + self.seconds + 30 + self.drain + 60


Probe = Callable[[dict[str, Any]], None]


def run(binary: Path, ports: Sequence[int], load: Load, directory: Path,
        on_opened: Probe | None = None, on_done: Probe | None = None) -> dict[str, Any]:
    """One run; the probes are called while the streams are open and idle.

    Returns ``{"opened": ..., "done": ..., "python_cpu_seconds": ...}``, where
    the last is this process's own CPU time over the publishing stage.
    """
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + load.time_bound
    with (directory / "sseload.err").open("wb") as err:
        process = subprocess.Popen(load.argv(binary, ports, directory), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=err)
    try:
        opened = _stage(process, deadline)
        if on_opened is not None:
            on_opened(opened)
        cpu = time.process_time()
        _go(process)
        done = _stage(process, deadline)
        done["python_cpu_seconds"] = round(time.process_time() - cpu, 4)
        if on_done is not None:
            on_done(done)
        _go(process)
        process.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return {"opened": opened, "done": done}


def _go(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()


def _stage(process: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    """The next JSON line; sseload writes nothing else until it is told to go on."""
    assert process.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("sseload did not finish in time")
        ready, _, _ = select.select([process.stdout], [], [], left)
        if ready:
            break
    line = process.stdout.readline()
    if not line.endswith(b"\n"):
        raise RuntimeError(f"sseload exited early with {process.wait(5)}")
    document: dict[str, Any] = json.loads(line)
    return document
