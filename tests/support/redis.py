"""A real ``redis-server`` per test: start, stop, pause, kill, restart, clean up.

The ``redis_server`` fixture (tests/conftest.py) is the factory over
:func:`redis_servers`; without a ``redis-server`` on PATH its tests skip
(``make system-deps`` installs it), and fail under CI.  Each server listens
on its own free port, never on 6379, keeps nothing on disk, and comes back on
the same port after :meth:`RedisServer.restart`.
Only when asked (:meth:`RedisServer.snapshot`, :meth:`RedisServer.restart_saved`)
does a server write its dump, to a file of its own (``redis-<port>.rdb``),
and :meth:`RedisServer.restart_from` brings it back from an older one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from .service import free_port
from .waiting import eventually

__all__ = ["REDIS_SERVER", "RedisServer", "redis_servers"]

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, port: int, workdir: Path, extra_args: tuple[str, ...]) -> None:
        self.port = port
        self.workdir = workdir
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.log_path = workdir / f"redis-{port}.log"
        self.rdb_path = workdir / f"redis-{port}.rdb"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, user: str, password: str, db: int = 0) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--dbfilename", self.rdb_path.name, "--protected-mode", "no",
                *self.extra_args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.paused = False
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
            try:
                with self.client(timeout=0.5) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        eventually(answers, timeout,
                   message=lambda: f"redis-server did not start:\n{self.log_path.read_text()}")
        return self

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)

    def command(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: connections reset, the port refuses; the data is gone."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(10)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> RedisServer:
        """Kill and start again, empty, on the same port."""
        self.kill()
        return self.start()

    def snapshot(self) -> bytes:
        """``SAVE`` now and return the dump: what a backup taken now restores."""
        self.command("SAVE")
        return self.rdb_path.read_bytes()

    def restart_from(self, snapshot: bytes | None) -> RedisServer:
        """Kill, then start on the same port from ``snapshot`` (a :meth:`snapshot`),
        as after a restore from backup; ``None`` starts it empty."""
        self.kill()
        if snapshot is None:
            self.rdb_path.unlink(missing_ok=True)
        else:
            self.rdb_path.write_bytes(snapshot)
        return self.start()

    def restart_saved(self) -> RedisServer:
        """A planned restart that loses nothing: ``SHUTDOWN SAVE``, then start
        from that dump on the same port."""
        assert self.process is not None
        # A bare socket: a client library would retry the connection Redis drops.
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"SHUTDOWN SAVE\r\n")
            self.process.wait(10)
        return self.start()

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
        eventually(check, timeout,
                   message=lambda: f"timed out waiting for {what}:\n{self.log_path.read_text()}")

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def _signal(self, sig: int) -> None:
        assert self.process is not None and self.process.poll() is None
        os.kill(self.process.pid, sig)


@contextmanager
def redis_servers() -> Iterator[Callable[..., RedisServer]]:
    """``start(*extra_args)`` starts one more ``redis-server``; all stop on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="sse-redis-"))
    servers: list[RedisServer] = []

    def start(*extra_args: str) -> RedisServer:
        server = RedisServer(free_port(), workdir, extra_args)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
