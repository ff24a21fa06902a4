"""Starting and stopping the servers under test, each pinned to the server core.

* ``ours``: ``python -m sse_service serve`` with the memory backend;
* ``naive``: ``naive_app.py`` (FastAPI + sse-starlette);
* ``nchan``: nginx with the Nchan module, one worker, its own prefix, config,
  pid file and port in the run's temporary directory (``daemon off``: it is a
  child of this process, never the system service);
* ``redis``: two replicas of the service with the Redis backend and a
  throwaway ``redis-server``, all three on the same core;
* ``ceiling``: ``sseecho``, the trivial C server that shows the load
  generator's own limit.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import loadgen

__all__ = ["Deployment", "Launcher", "Process", "nchan_module", "nginx_binary"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOOPBACK = loadgen.LOOPBACK
NCHAN_MODULE_GLOBS = ("/usr/lib/nginx/modules/ngx_nchan_module.so",
                      "/usr/lib*/nginx/modules/ngx_nchan_module.so",
                      "/usr/share/nginx/modules/ngx_nchan_module.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nchan_module() -> str | None:
    for pattern in NCHAN_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


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
    """One implementation: the servers clients talk to, what to probe, and backends."""

    kind: str
    servers: list[Process]
    backends: list[Process] = field(default_factory=list)
    #: Processes whose memory and CPU count as the server's (nginx: master and worker).
    extra_pids: list[int] = field(default_factory=list)
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers] + self.extra_pids

    @property
    def backend_pids(self) -> list[int]:
        return [b.pid for b in self.backends]

    def stop(self) -> None:
        for process in self.servers + self.backends:
            process.stop()

    def log_counts(self) -> dict[str, int]:
        text = "".join(s.log_text() for s in self.servers) + "".join(
            log.read_text(errors="replace") for log in self.extra_logs if log.exists()
        )
        return {
            "slow_consumer": text.count("slow_consumer"),
            "tracebacks": text.count("Traceback"),
            "errors": sum(1 for line in text.splitlines() if " ERROR " in line
                          or "[error]" in line or "[crit]" in line or "[alert]" in line),
        }


@dataclass
class Launcher:
    server_cpu: int | None
    logs: Path
    binaries: dict[str, Path]
    queue_size: int | None = None
    redis_query: str = ""
    #: Streams one user may hold in the service: the fan-out case opens 100 per user.
    per_user: int = 100
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
        env.update({"SSE_JWT_SECRET": loadgen.DEFAULT_SECRET, "SSE_LOG_LEVEL": "info",
                    "SSE_DRAIN_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def ours(self, connections: int, **extra: str) -> Process:
        port = free_port()
        # The accept case measures what a core can take, not the admission limit
        # that spreads a reconnect storm out (SSE_MAX_CONNECT_RATE).
        settings = {"SSE_MAX_CONNECTIONS": str(max(10_000, connections + 200)),
                    "SSE_MAX_CONNECTIONS_PER_USER": str(self.per_user + 10),
                    "SSE_MAX_CONNECT_RATE": "1000000",
                    # Each process serves its metrics, as in a pod; replicas on one
                    # host need a port each.
                    "SSE_METRICS_PORT": str(free_port()), **extra}
        if self.queue_size is not None:
            settings["SSE_QUEUE_SIZE"] = str(self.queue_size)
        argv = [sys.executable, "-m", "sse_service", "serve", "--host", LOOPBACK,
                "--port", str(port)]
        return _healthy(self._spawn("ours", argv, self._env(**settings), port))

    def naive(self) -> Process:
        port = free_port()
        argv = [sys.executable, str(HERE / "naive_app.py"), "--port", str(port)]
        return _healthy(self._spawn("naive", argv, self._env(), port))

    def ceiling(self) -> Process:
        port = free_port()
        argv = [str(self.binaries["sseecho"]), str(port)]
        return _healthy(self._spawn("sseecho", argv, self._env(), port))

    def nchan(self, connections: int) -> Deployment:
        binary, module = nginx_binary(), nchan_module()
        if binary is None or module is None:
            raise RuntimeError("nginx or the Nchan module is not installed")
        port = free_port()
        self.started += 1
        prefix = self.logs / f"{self.started:02d}-nginx-{port}"
        prefix.mkdir()
        # The worker runs as an unprivileged user; it must reach its temp paths.
        os.chmod(prefix, 0o755)
        conf = prefix / "nginx.conf"
        conf.write_text(nchan_config(module, prefix, port, connections))
        argv = [binary, "-p", str(prefix), "-c", str(conf)]
        master = _healthy(self._spawn("nginx", argv, self._env(), port))
        worker = _children(master.pid)
        return Deployment("nchan", [master], extra_pids=worker,
                          extra_logs=[prefix / "error.log"])

    def redis_server(self) -> Process:
        port = free_port()
        binary = shutil.which("redis-server") or "redis-server"
        argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        process = self._spawn("redis", argv, self._env(), port)
        _wait_redis(process)
        return process

    def deploy(self, implementation: str, connections: int) -> Deployment:
        if implementation == "ours":
            return Deployment("dapr", [self.ours(connections)])
        if implementation == "naive":
            return Deployment("dapr", [self.naive()])
        if implementation == "nchan":
            return self.nchan(connections)
        if implementation == "ceiling":
            return Deployment("echo", [self.ceiling()])
        redis = self.redis_server()
        deployment = Deployment("dapr", [], [redis])
        try:
            url = f"redis://{LOOPBACK}:{redis.port}/0"
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


def nchan_config(module: str, prefix: Path, port: int, connections: int) -> str:
    """The same job as the service: one channel per user, 1000 messages kept in
    memory, a keepalive comment every 15 s, publishing on loopback only."""
    temp = "\n".join(f"  {name}_temp_path {prefix / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {connections + 4096};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
  worker_connections {connections + 2048};
}}
http {{
  access_log {prefix / "access.log"};
{temp}
  keepalive_requests 10000000;
  nchan_shared_memory_size 512M;
  server {{
    listen {LOOPBACK}:{port} backlog=4096;
    location = /healthz {{
      return 200 "ok\\n";
    }}
    location ~ ^/sub/([^/]+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
      nchan_eventsource_ping_interval 15;
      nchan_eventsource_ping_event "";
      nchan_eventsource_ping_comment "keepalive";
    }}
    location ~ ^/pub/([^/]+)$ {{
      allow 127.0.0.1;
      deny all;
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }}
  }}
}}
"""


def _children(pid: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            text = []
        if text:
            return [int(child) for child in text]
        time.sleep(0.05)
    raise RuntimeError(f"nginx master {pid} started no worker")


def _healthy(process: Process, timeout: float = 30.0) -> Process:
    deadline = time.monotonic() + timeout
    url = f"http://{LOOPBACK}:{process.port}/healthz"
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
            with socket.create_connection((LOOPBACK, process.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    process.stop()
    raise RuntimeError("redis-server did not answer PING")
