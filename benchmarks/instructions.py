"""Instructions the server spends per stream connect, or per delivered event, counted by callgrind.

Wall-clock rates move with whatever else the machine runs; instruction counts
do not (the same binary, inputs and environment give the same total), so this
is the yardstick for changes on the connect path when the machine is shared.
It starts ``sse-service serve`` (memory backend) under callgrind with
instrumentation off, opens some warm-up streams, switches instrumentation on,
opens ``--connects`` more, each with its own token (``--concurrency`` at a
time, each read up to its ``event: ready``), and prints the server's user-space
instructions per connect.  Kernel work (accept, reads, writes) is not counted.
``--fanout STREAMS`` counts single CloudEvents delivered to that many streams of
one user instead, and ``--bulk USERS`` bulk deliveries of ``--batch`` entries,
each entry to the next of that many users (one stream each).

    PYTHONPATH=src .venv/bin/python benchmarks/instructions.py --connects 300
    PYTHONPATH=src .venv/bin/python benchmarks/instructions.py --bulk 200 --events 2000
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/instructions.py SSE_ACCESS_LOG=false

Needs ``valgrind`` (Debian package) and takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).parent))
import loadgen  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"
WARMUP = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _open(port: int, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
                 f"{token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    seen = b""
    while b"event: ready" not in seen:
        data = await asyncio.wait_for(reader.read(4096), 30)
        if not data:
            raise RuntimeError(f"stream ended before its ready event: {seen!r}")
        seen += data
    return writer


async def _listening(port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _read_events(port: int, token: str, count: int, opened: asyncio.Event,
                       streams: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
                 f"{token}\r\n\r\n".encode())
    seen = b""
    while b"event: ready" not in seen:
        seen += await asyncio.wait_for(reader.read(65536), 30)
    streams.append(1)
    if len(streams) - 1 == streams[0]:
        opened.set()
    got = seen.count(b"\ndata: {\"type\":\"task_update\"")
    while got < count:
        data = await asyncio.wait_for(reader.read(65536), 60)
        if not data:
            raise RuntimeError("stream ended early")
        got += data.count(b"\ndata: {\"type\":\"task_update\"")
    writer.close()


async def _fanout(pid: int, port: int, token: str, streams: int, events: int) -> None:
    await _listening(port)
    opened = asyncio.Event()
    count = [streams]  # the first item is the target, the rest one per opened stream
    readers = [asyncio.create_task(_read_events(port, token, events, opened, count))
               for _ in range(streams)]
    await asyncio.wait_for(opened.wait(), 60)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    for seq in range(1, events + 1):
        body = loadgen.cloudevent(b"fan", seq, f"evt-{seq}".encode(), 0)
        writer.write(b"POST /task-updates HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/cloudevents+json\r\ntraceparent: " + loadgen.NO_TRACE.encode()
                     + b"\r\npubsubname: taskpubsub\r\ncontent-length: %d\r\n\r\n" % len(body)
                     + body)
        answer = b""
        while b"SUCCESS" not in answer:
            answer += await asyncio.wait_for(reader.read(4096), 30)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    writer.close()


async def _bulk(pid: int, port: int, tokens: list[str], events: int, batch: int) -> None:
    """Bulk deliveries of ``batch`` entries, each entry for the next user in turn."""
    await _listening(port)
    opened = asyncio.Event()
    count = [len(tokens)]
    per_user = events // len(tokens)
    readers = [asyncio.create_task(_read_events(port, token, per_user, opened, count))
               for token in tokens]
    await asyncio.wait_for(opened.wait(), 60)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    for first in range(0, events, batch):
        entries = b",".join(
            loadgen._ENTRY % (seq, loadgen.cloudevent(f"user-{seq % len(tokens)}".encode(),
                                                      seq, f"evt-{seq}".encode(), 0))
            for seq in range(first, min(first + batch, events)))
        body = loadgen._BULK % (entries, b"bulk-%d" % first)
        writer.write(b"POST /task-updates HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\npubsubname: taskpubsub\r\ncontent-length: %d"
                     b"\r\n\r\n" % len(body) + body)
        answer = b""
        while answer.count(b"SUCCESS") < min(batch, events - first):
            answer += await asyncio.wait_for(reader.read(65536), 30)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    writer.close()


async def _drive(pid: int, port: int, tokens: list[str], concurrency: int) -> None:
    await _listening(port)
    keep = [await _open(port, token) for token in tokens[:WARMUP]]
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    gate = asyncio.Semaphore(concurrency)

    async def one(token: str) -> asyncio.StreamWriter:
        async with gate:
            return await _open(port, token)

    keep += await asyncio.gather(*(one(token) for token in tokens[WARMUP:]))
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for writer in keep:
        writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fanout", type=int, metavar="STREAMS",
                        help="count deliveries to this many streams of one user instead")
    parser.add_argument("--bulk", type=int, metavar="USERS",
                        help="count bulk deliveries to one stream each of this many users")
    parser.add_argument("--batch", type=int, default=50, help="entries per bulk (--bulk)")
    parser.add_argument("--events", type=int, default=300,
                        help="events delivered (--fanout, --bulk)")
    parser.add_argument("settings", nargs="*", help="extra NAME=value settings for the server")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    port = _free_port()
    out = Path(tempfile.mkdtemp(prefix="sse-instructions-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env.update(SSE_JWT_SECRET=SECRET, SSE_MAX_CONNECTIONS="20000", SSE_METRICS_PORT="0",
               SSE_MAX_CONNECT_RATE="1000000", SSE_LOG_LEVEL="info",
               SSE_MAX_CONNECTIONS_PER_USER=str(max(10, (args.fanout or 0) + 10)),
               **dict(setting.split("=", 1) for setting in args.settings))
    now = int(time.time())
    tokens = [jwt.encode({"sub": f"user-{i}", "iat": now, "exp": now + 3600}, SECRET, "HS256")
              for i in range(WARMUP + args.connects)]
    with (out / "server.log").open("w") as log:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}/callgrind.out", sys.executable, "-m", "sse_service",
             "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if args.bulk:
                users = [jwt.encode({"sub": f"user-{i}", "iat": now, "exp": now + 3600},
                                    SECRET, "HS256") for i in range(args.bulk)]
                asyncio.run(_bulk(server.pid, port, users, args.events, args.batch))
            elif args.fanout:
                fan = jwt.encode({"sub": "fan", "iat": now, "exp": now + 3600}, SECRET, "HS256")
                asyncio.run(_fanout(server.pid, port, fan, args.fanout, args.events))
            else:
                asyncio.run(_drive(server.pid, port, tokens, args.concurrency))
        finally:
            server.terminate()
            server.wait(120)
    total = 0
    for dump in out.glob("callgrind.out*"):
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    if args.bulk:
        print(f"{total / args.events:,.0f} server instructions per event in bulk deliveries "
              f"of {args.batch} to {args.bulk} users, one stream each ({args.events} events; "
              f"files in {out})")
    elif args.fanout:
        print(f"{total / args.events:,.0f} server instructions per event delivered to "
              f"{args.fanout} streams ({total / args.events / args.fanout:,.0f} per frame; "
              f"{args.events} single deliveries; files in {out})")
    else:
        print(f"{total / args.connects:,.0f} server instructions per stream connect "
              f"({args.connects} connects, {args.concurrency} at a time; files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
