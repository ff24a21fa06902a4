"""Running the app under uvicorn with a graceful drain on SIGTERM.

uvicorn alone stops listening at once and then waits forever for endless
streams.  :class:`DrainingServer` first marks the service not ready and
closes streams over ``SSE_DRAIN_SECONDS`` (clients reconnect to other
replicas), and only then lets uvicorn shut down.  A second signal skips the
drain, a third stops at once.  A signal is the way this process is meant to
end, so after a clean shutdown it exits 0 (uvicorn would raise the signal
again, turning SIGTERM into exit status -15 and Ctrl+C into a traceback).

Connections are first served by :class:`~sse_service.stream_protocol.StreamProtocol`,
which serves stream requests itself and hands every other connection to
:class:`~sse_service.protocol.BoundedHttpProtocol` (uvicorn's httptools protocol
with bounded request heads); with ``SSE_STREAM_PATH=asgi``, by the latter alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import FrameType

import uvicorn

from .app import Application
from .config import Settings
from .log_setup import lighten_records, log_config
from .protocol import bounded_protocol
from .stream_protocol import stream_protocol

__all__ = ["DrainingServer", "serve"]

logger = logging.getLogger(__name__)

_GRACEFUL_SECONDS = 3


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Application) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it records the signal to raise it again on exit.
        if self.should_exit:
            self.force_exit = True
        elif self._loop is None or self._drain is not None:
            self.should_exit = True
        else:
            self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is not None or self.should_exit:
            return
        self._drain = asyncio.ensure_future(self._app.drain())
        self._drain.add_done_callback(self._drained)

    def _drained(self, _: asyncio.Future[None]) -> None:
        self.should_exit = True


def serve(settings: Settings) -> None:
    app = Application(settings)
    # Each stream leaves a few dozen long-lived objects; with the default
    # thresholds, full collections over tens of thousands of streams cost a
    # third of the CPU spent accepting them.  Start-up objects are frozen out
    # of collection, and full passes run far less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    lighten_records()
    if settings.stream_path == "socket":
        http: type[asyncio.Protocol] = stream_protocol(
            bounded_protocol(settings, app.stream, app.deliveries), app.stream)
    else:
        http = bounded_protocol(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http,
        ws="none",
        lifespan="on",
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=settings.access_log,
        # The socket's peer is the client: a forwarding header is a claim, not a
        # fact, and the demo's loopback check must never read one.
        proxy_headers=False,
        # After the drain only ordinary requests are left; a stalled one is
        # cancelled rather than holding the exit.
        timeout_graceful_shutdown=_GRACEFUL_SECONDS,
        backlog=4096,
    )
    try:
        DrainingServer(config, app).run()
    except KeyboardInterrupt:
        # Ctrl+C before the server installed its handlers (during start-up).
        logger.info("interrupted during start-up")
