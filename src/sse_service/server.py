"""Running the app under uvicorn with a graceful drain on SIGTERM.

uvicorn alone stops listening at once and then waits forever for endless
streams.  :class:`DrainingServer` first marks the service not ready and
closes streams over ``SSE_DRAIN_SECONDS`` (clients reconnect to other
replicas), and only then lets uvicorn shut down.  A second signal skips the
drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import FrameType

import uvicorn

from .app import Application
from .config import Settings
from .logs import log_config

__all__ = ["DrainingServer", "serve"]

logger = logging.getLogger(__name__)


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
        if self._loop is None or self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        if self._drain is not None:
            return
        self._drain = asyncio.ensure_future(self._app.drain())
        self._drain.add_done_callback(lambda _: super(DrainingServer, self).handle_exit(sig, None))


def serve(settings: Settings) -> None:
    app = Application(settings)
    # Each stream leaves a few dozen long-lived objects; with the default
    # thresholds, full collections over tens of thousands of streams cost a
    # third of the CPU spent accepting them.  Start-up objects are frozen out
    # of collection, and full passes run far less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_config=log_config(settings.log_level),
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.drain_seconds) + 5,
        backlog=4096,
    )
    DrainingServer(config, app).run()
