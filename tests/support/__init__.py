"""Test support: real service processes, a real SSE client, daprd-shaped deliveries, waits.

The common names are here (``from support import Service, cloudevent, eventually``);
Redis and the browser have their own modules (``support.redis``, ``support.browser``).
Fixtures stay in tests/conftest.py.
"""

from __future__ import annotations

from .dapr import DAPR_HEADERS, NO_TRACE, cloudevent, task_event
from .service import SECRET, Service, free_port, launch, make_token, running_service, wait_healthy
from .sse_client import Stream, connect
from .system import UNDER_CI, unavailable
from .waiting import aeventually, eventually, holds

__all__ = [
    "DAPR_HEADERS",
    "NO_TRACE",
    "SECRET",
    "UNDER_CI",
    "Service",
    "Stream",
    "aeventually",
    "cloudevent",
    "connect",
    "eventually",
    "free_port",
    "holds",
    "launch",
    "make_token",
    "running_service",
    "task_event",
    "unavailable",
    "wait_healthy",
]
