"""Browser-test support: Chromium, a cuttable TCP proxy, a second origin, page helpers.

Chromium is Debian's package (``/usr/bin/chromium``), driven by Playwright;
nothing here downloads a browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from conftest import DAPR_HEADERS, cloudevent, task_event

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
CLIENT_JS = (files("sse_service") / "static" / "sse-client.js").read_bytes()


def ensure_chromium() -> str | None:
    """Install Debian's Chromium when it is missing; the reason it is unusable, else None."""
    if os.path.exists(CHROMIUM):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot run here to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return f"{CHROMIUM} is missing and {' '.join(command)} failed: {done.stderr[-500:]}"
    return None if os.path.exists(CHROMIUM) else f"apt-get installed no {CHROMIUM}"


async def publish(url: str, user: str, task_id: int, kind: str = "task.created") -> None:
    """Deliver one event as daprd would, without blocking the loop the browser runs on."""
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(f"{url}/task-updates", headers=DAPR_HEADERS,
                                  content=cloudevent(task_event(user, task_id, kind)))
    assert reply.status_code == 200 and reply.json()["status"] == "SUCCESS", reply.text


async def open_streams(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return int((await client.get(f"{url}/readyz")).json()["streams"])


async def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Await ``check()`` (sync or async) until it is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def holds(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Fail as soon as ``check()`` is false within the next ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert check(), f"no longer true: {what}"
        await asyncio.sleep(0.05)
    assert check(), f"no longer true: {what}"


_ACCESS = re.compile(r'"GET (?P<target>\S+) HTTP/[0-9.]+" (?P<status>[0-9]{3})')


def count_requests(logs: str, path: str, status: int | None = None,
                   query: bool | None = None) -> int:
    """Access-log lines for GET ``path`` (with or without a query string) and ``status``."""
    count = 0
    for match in _ACCESS.finditer(logs):
        target_path, mark, _ = match["target"].partition("?")
        if target_path != path or (status is not None and int(match["status"]) != status):
            continue
        if query is None or query == bool(mark):
            count += 1
    return count


class CuttableProxy:
    """A TCP proxy between browser and service that can drop every connection
    at once, as an ingress timeout or a flaky network does, and hold the
    reconnects until the test lets them through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.requests: list[str] = []
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.release()
        self.cut(hold=False)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self, hold: bool = True) -> None:
        """Reset every open connection; with ``hold``, park new ones until :meth:`release`."""
        if hold:
            self._open.clear()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def release(self) -> None:
        self._open.set()

    async def wait_for_request(self, needle: str, start: int = 0, timeout: float = 10) -> str:
        """The first request head (from index ``start``) that contains ``needle``."""
        def found() -> str | None:
            return next((r for r in self.requests[start:] if needle in r), None)
        return str(await poll(found, timeout, f"a request with {needle!r} through the proxy"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            first = await reader.read(65536)
            if not first:
                return
            self._note(first)
            await self._open.wait()
            if writer.transport.is_closing():
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream)
            upstream.write(first)
            await asyncio.gather(self._pipe(reader, upstream, note=True),
                                 self._pipe(up_reader, writer, note=False))
        except (ConnectionError, OSError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._writers.discard(end)
                    end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    note: bool) -> None:
        try:
            while data := await reader.read(65536):
                if note:
                    self._note(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    def _note(self, data: bytes) -> None:
        if data[:8].split(b" ", 1)[0] in (b"GET", b"POST", b"HEAD", b"OPTIONS", b"DELETE"):
            self.requests.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))


FRONTEND_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>frontend</title>
<p>status: <span id="status" data-testid="status" data-status="idle">idle</span></p>
<p>cookie readable by script: <span id="cookie-visible"></span></p>
<ol id="events"></ol>
<script type="module">
import { TaskStream } from "/sse-client.js";
const $ = (selector) => document.querySelector(selector);
$("#cookie-visible").textContent = document.cookie.includes("sse_token") ? "yes" : "no";
window.stream = new TaskStream({
  url: %(events_url)s,
  withCredentials: true,
  storageKey: null,
  onStatus: (status) => {
    $("#status").dataset.status = status;
    $("#status").textContent = status;
  },
  onEvent: (message, id) => {
    const row = document.createElement("li");
    Object.assign(row.dataset, { id, taskId: message.task.id });
    row.textContent = `${message.event} #${message.task.id}`;
    $("#events").append(row);
  },
});
</script>
"""


class Frontend:
    """A second origin, the way an app's own frontend server is one.

    It serves its own copy of ``sse-client.js`` (the copy-it-in integration),
    and ``/login?user=…`` sets ``sse_token`` like an auth backend would: an
    ``HttpOnly; Secure`` cookie on the host the service shares with it.
    """

    def __init__(self, host: str, mint: Callable[[str], str], same_site: str = "Lax") -> None:
        self.host = host
        self.port = 0
        self.events_url = ""
        self._mint = mint
        self._same_site = same_site
        self._server: asyncio.Server | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Frontend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            parts = urlsplit(target)
            headers: list[tuple[str, str]] = []
            if parts.path == "/":
                body = (FRONTEND_PAGE % {"events_url": json.dumps(self.events_url)}).encode()
                status, kind = "200 OK", "text/html; charset=utf-8"
            elif parts.path == "/sse-client.js":
                status, body, kind = "200 OK", CLIENT_JS, "text/javascript; charset=utf-8"
            elif parts.path == "/login":
                user = parse_qs(parts.query).get("user", ["42"])[0]
                cookie = (f"sse_token={self._mint(user)}; Path=/; HttpOnly; Secure; "
                          f"SameSite={self._same_site}")
                headers = [("set-cookie", cookie), ("location", "/")]
                status, body, kind = "303 See Other", b"", "text/plain"
            else:
                status, body, kind = "404 Not Found", b"not found", "text/plain"
            lines = [f"HTTP/1.1 {status}", f"content-type: {kind}",
                     f"content-length: {len(body)}", "cache-control: no-store",
                     "connection: close", *(f"{k}: {v}" for k, v in headers)]
            writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()
