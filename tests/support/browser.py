"""Browser-test support: Chromium, a second origin, page helpers (the proxy is in proxy.py).

Chromium is Debian's package, found on PATH and driven by Playwright; nothing
here installs or downloads a browser: ``make system-deps`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable
from importlib.resources import files
from urllib.parse import parse_qs, urlsplit

import httpx

from .dapr import DAPR_HEADERS, cloudevent, task_event
from .system import unavailable

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "Frontend",
    "count_requests",
    "open_streams",
    "publish",
    "require_chromium",
]

CHROMIUM = shutil.which("chromium")
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


def require_chromium() -> str:
    """Chromium's path; without it the calling test module skips (fails under CI)."""
    if CHROMIUM is None:
        unavailable("no Chromium for browser tests: chromium is not on PATH; "
                    "`make system-deps` installs it (Debian's package)")
    return CHROMIUM


async def publish(url: str, user: str, task_id: int, kind: str = "task.created") -> None:
    """Deliver one event as daprd would, without blocking the loop the browser runs on."""
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(f"{url}/task-updates", headers=DAPR_HEADERS,
                                  content=cloudevent(task_event(user, task_id, kind)))
    assert reply.status_code == 200 and reply.json()["status"] == "SUCCESS", reply.text


async def open_streams(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return int((await client.get(f"{url}/readyz")).json()["streams"])


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
