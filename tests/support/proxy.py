"""A TCP proxy the tests can cut: what an ingress timeout or a flaky network does."""

from __future__ import annotations

import asyncio

from .waiting import aeventually

__all__ = ["CuttableProxy"]


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
        return str(await aeventually(
            found, timeout, message=f"a request with {needle!r} through the proxy"))

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
