"""A JWKS endpoint over real HTTP, for the token tests (a tiny local server, not a mock)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["JwksServer", "PublishedKey", "jwks_server"]


class PublishedKey(Protocol):
    def jwk(self) -> dict[str, Any]: ...


class JwksServer:
    """A real JWKS endpoint at ``path``: serves ``keys`` (swappable at any time; each
    has a ``jwk()``) or ``body``, or fails, stalls, drips or floods on demand."""

    def __init__(self, keys: Sequence[PublishedKey], path: str = "/jwks") -> None:
        self.keys = list(keys)
        self.path = path
        self.body: bytes | None = None
        self.status = 200
        self.headers: dict[str, str] = {}
        self.stall = 0.0  # seconds before answering (cut short by close())
        self.drip = 0.0  # seconds between single body bytes, for 100 bytes
        self.flood = 0  # bytes of body to stream, announced in content-length
        self.requests = 0
        self.sent = 0
        self.done = threading.Event()  # the last flood or drip is over
        self.release = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != outer.path:
                    self.send_error(404)
                    return
                with outer.lock:
                    outer.requests += 1
                if outer.stall:
                    outer.release.wait(outer.stall)
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                if outer.flood or outer.drip:
                    outer.pour(self)
                    return
                body = outer.document()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def document(self) -> bytes:
        if self.body is not None:
            return self.body
        return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()

    def pour(self, handler: BaseHTTPRequestHandler) -> None:
        self.done.clear()
        self.sent = 0
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        if self.flood:
            handler.send_header("content-length", str(self.flood))
        handler.end_headers()
        chunk = b'{"keys": [], "pad": "' + b"x" * 65_536
        try:
            while self.sent < (100 if self.drip else self.flood):
                piece = chunk[:1] if self.drip else chunk[: self.flood - self.sent]
                handler.wfile.write(piece)
                handler.wfile.flush()
                self.sent += len(piece)
                if self.drip and self.release.wait(self.drip):
                    return
        except OSError:
            pass  # the client hung up
        finally:
            self.done.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@contextmanager
def jwks_server(keys: Sequence[PublishedKey], path: str = "/jwks") -> Iterator[JwksServer]:
    server = JwksServer(keys, path)
    try:
        yield server
    finally:
        server.close()
