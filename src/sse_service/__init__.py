"""sse-service: per-user Server-Sent Events streams of task updates fed by Dapr pub/sub."""

from .app import Application, create_app
from .broker import Broker, Position, Record, Replay
from .config import Settings
from .errors import (
    AuthError,
    BackendUnavailable,
    CapacityError,
    EventError,
    ServiceError,
    UserLimitError,
)

__all__ = [
    "Application",
    "AuthError",
    "BackendUnavailable",
    "Broker",
    "CapacityError",
    "EventError",
    "Position",
    "Record",
    "Replay",
    "ServiceError",
    "Settings",
    "UserLimitError",
    "create_app",
]
__version__ = "0.1.0"
