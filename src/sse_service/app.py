"""The application factory: wiring, routes and the lifespan.

``create_app(settings)`` builds every part from one :class:`Settings`; the
lifespan starts them in order (broker, hub, metrics server) and stops them in
reverse.  The metrics and their registry belong to the application instance.
``/events`` and the Dapr delivery route are dispatched before FastAPI's
routing and middleware: the stream is the path whose per-connection cost
matters, the delivery route the one whose per-event cost does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Protocol, runtime_checkable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .auth import Authenticator
from .bodies import BodyLimit
from .broker import Broker
from .broker_memory import MemoryBroker
from .config import Settings
from .dapr_routes import DeliveryEndpoint, dapr_router
from .demo import demo_router
from .errors import BackendUnavailable
from .hub import Hub
from .ingest import ROUTE, Ingest
from .logs import install_filter
from .metrics import Metrics
from .metrics_export import MetricsServer, build_registry
from .stream import StreamEndpoint

__all__ = ["Application", "create_app", "create_broker"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(files("sse_service") / "static"))


def create_broker(settings: Settings, metrics: Metrics | None = None) -> Broker:
    if settings.backend == "redis":
        from .broker_redis import RedisBroker

        return RedisBroker(settings, metrics)
    return MemoryBroker(settings.history_size, settings.history_ttl_seconds)


@runtime_checkable
class _PubSub(Protocol):
    """A broker with a pub/sub connection (Redis) whose state is a gauge."""

    @property
    def pubsub_connected(self) -> bool: ...


class Application:
    """The ASGI app: ``/events`` goes straight to the stream, the rest to FastAPI."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.broker = broker or create_broker(settings, self.metrics)
        self.hub = Hub(self.broker, settings, self.metrics)
        self.auth = Authenticator(settings)
        self.stream = StreamEndpoint(self.hub, self.auth, settings)
        self.deliveries = DeliveryEndpoint(Ingest(self.broker, settings, self.metrics), settings)
        given = self.broker
        pubsub = (lambda: given.pubsub_connected) if isinstance(given, _PubSub) else None
        self.registry = build_registry(self.metrics, lambda: self.hub.count,
                                       lambda: self.hub.users, pubsub)
        self.metrics_server = MetricsServer(self.registry, settings.host, settings.metrics_port)
        self.api = self._build_api()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/events":
            await self.stream(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == ROUTE:
            await self.deliveries(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def drain(self) -> None:
        """Begin a graceful shutdown: not ready, then close streams over the window."""
        logger.info("draining %d streams over %.1fs", self.hub.count, self.settings.drain_seconds)
        await self.hub.drain(self.settings.drain_seconds)

    async def ready(self) -> str | None:
        """None when ready, else the reason."""
        if self.hub.draining:
            return "draining"
        try:
            await asyncio.wait_for(self.broker.ping(), timeout=2.0)
        except BackendUnavailable as exc:
            return exc.reason
        except TimeoutError:
            return "backend did not answer in time"
        return None

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        # Under plain uvicorn no handler of ours escapes and masks log lines.
        install_filter("uvicorn", "uvicorn.access")
        await self.broker.start(self.hub)
        await self.hub.start()
        self.metrics_server.start()
        logger.info("sse-service ready: backend=%s", self.settings.backend)
        try:
            yield
        finally:
            await self.metrics_server.stop()
            await self.auth.close()
            await self.hub.stop()
            await self.broker.close()

    def _build_api(self) -> FastAPI:
        api = FastAPI(title="sse-service", lifespan=self.lifespan, docs_url=None,
                      redoc_url=None)
        if self.settings.cors_origins:
            api.add_middleware(CORSMiddleware, allow_origins=list(self.settings.cors_origins),
                               allow_credentials=True, allow_methods=["GET"])
        api.include_router(dapr_router(self.settings))

        @api.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz() -> Response:
            reason = await self.ready()
            if reason is not None:
                return JSONResponse({"status": "unavailable", "reason": reason}, 503)
            return JSONResponse({"status": "ready", "streams": self.hub.count})

        if self.settings.demo_page:
            api.include_router(demo_router(self.settings, self.deliveries, self.auth))
        if STATIC_DIR.is_dir():
            api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
        # Outermost, so no route reads a body before its size is checked; the
        # Dapr route answers oversized deliveries itself (DROP, never 413).
        api.add_middleware(BodyLimit, limit=self.settings.max_body_bytes, exempt={ROUTE})
        return api


def create_app(settings: Settings | None = None) -> Application:
    """Factory for ``uvicorn --factory sse_service.app:create_app`` and the CLI."""
    return Application(settings or Settings())
