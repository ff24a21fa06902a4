"""The service as a real process: ``sse-service serve`` on a free port, its log, its tokens.

:func:`launch` starts one and waits until ``/healthz`` answers; the ``start_service``
fixture (tests/conftest.py) is the per-test factory over it, :func:`running_service`
the per-module one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from .dapr import DAPR_HEADERS, cloudevent, task_event
from .waiting import eventually

__all__ = [
    "SECRET",
    "Service",
    "free_port",
    "launch",
    "make_token",
    "running_service",
    "wait_healthy",
]

SECRET = "test-secret-0123456789abcdef0123456789abcdef"


_HANDED_OUT: deque[int] = deque(maxlen=4096)


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out lately.

    The kernel may give the same ephemeral port to two binds in a row once the first
    socket is closed, so a service and its metrics listener could be handed one port.
    """
    for _ in range(64):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no fresh free port in 64 tries")


def make_token(user: str, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    now = time.time()
    payload = {"sub": user, "iat": int(now), "exp": now + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@dataclass
class Service:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """The service process's resident set size now (VmRSS), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (kib,) = (line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib)

    def token(self, user: str, ttl: float = 3600, **claims: Any) -> str:
        return make_token(user, ttl, **claims)

    def deliver(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/task-updates", content=body,
                          headers=headers or DAPR_HEADERS, timeout=10)

    def publish(self, user: str, task_id: int, kind: str = "task.created",
                event_id: str | None = None) -> str:
        reply = self.deliver(cloudevent(task_event(user, task_id, kind), event_id))
        assert reply.status_code == 200, reply.text
        status = reply.json()["status"]
        assert status == "SUCCESS", status
        return status

    async def apublish(self, client: httpx.AsyncClient, user: str, task_id: int) -> None:
        reply = await client.post(f"{self.url}/task-updates", headers=DAPR_HEADERS,
                                  content=cloudevent(task_event(user, task_id)))
        assert reply.json()["status"] == "SUCCESS", reply.text

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        eventually(lambda: text in self.logs(), timeout,
                   message=lambda: f"log line {text!r} never appeared:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(healthy, timeout, interval=0.05,
               message=lambda: f"service did not start:\n{log.read_text()}")


def launch(tmp: Path, port: int | None = None, **settings: Any) -> Service:
    """Start ``sse-service serve`` in a subprocess and wait until it is healthy.

    Settings are keyword arguments: ``keepalive_seconds=0.2`` sets
    ``SSE_KEEPALIVE_SECONDS``; upper-case names (``APP_API_TOKEN``) pass as they are.
    """
    if port is None:
        # A port free a moment ago can be taken (a client's ephemeral port) before
        # the service binds it: a fresh one then, a few times.
        for _ in range(3):
            try:
                return launch(tmp, free_port(), **settings)
            except _PortTaken:
                continue
        raise RuntimeError("three free ports in a row were taken before the service bound them")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SSE_") and k not in ("APP_API_TOKEN", "BETTER_AUTH_SECRET")}
    env.update({"SSE_JWT_SECRET": SECRET, "SSE_LOG_LEVEL": "info",
                "SSE_DRAIN_SECONDS": "1", "SSE_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    for key, value in settings.items():
        name = key if key.isupper() else "SSE_" + key.upper()
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    log = Path(tempfile.mkstemp(prefix=f"service-{port}-", suffix=".log", dir=tmp)[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sse_service", "serve", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", port, process, log, env)
    try:
        wait_healthy(service.url, process, log)
    except BaseException as exc:
        service.stop(signal.SIGKILL)
        if isinstance(exc, RuntimeError) and f"{port}): address already in use" in log.read_text():
            raise _PortTaken(f"port {port}: address already in use") from exc
        raise
    return service


class _PortTaken(RuntimeError):
    """The service could not bind its listen port: something took it first."""


@contextmanager
def running_service(tmp: Path, **settings: Any) -> Iterator[Service]:
    """A service for a whole module (``start_service`` is per test)."""
    service = launch(tmp, **settings)
    try:
        yield service
    finally:
        service.stop(signal.SIGKILL)
