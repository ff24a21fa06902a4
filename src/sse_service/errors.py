"""One error hierarchy, mapped to HTTP and to Dapr statuses in one place.

::

    ServiceError
    ├── AuthError              401  bad, missing or expired token
    ├── LimitError
    │   ├── UserLimitError     429  too many streams for one user
    │   └── CapacityError      503  process full or draining (with Retry-After)
    ├── EventError             Dapr DROP: the event can never succeed
    └── BackendUnavailable     Dapr RETRY, /readyz 503: transient broker failure

Dapr reads a reply ``{"status": "SUCCESS" | "RETRY" | "DROP"}``; an unknown
exception is RETRY, never a silent SUCCESS.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AuthError",
    "BackendUnavailable",
    "CapacityError",
    "CloseReason",
    "DaprStatus",
    "EventError",
    "LimitError",
    "ResyncReason",
    "ServiceError",
    "UserLimitError",
    "dapr_status",
    "http_status",
]


class DaprStatus(StrEnum):
    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


class CloseReason(StrEnum):
    """Why a stream ended: the one catalogue for logs, the closing comment and tests."""

    CLIENT_DISCONNECTED = "client_disconnected"
    TOKEN_EXPIRED = "token_expired"
    SLOW_CONSUMER = "slow_consumer"
    SERVER_SHUTDOWN = "server_shutdown"
    REVOKED = "revoked"
    CLOSED = "closed"


class ResyncReason(StrEnum):
    """Why a client must refetch its state (``event: resync``): the replay it asked for
    cannot be given without a gap."""

    UNKNOWN_EPOCH = "unknown_epoch"
    EXPIRED = "expired"
    UNKNOWN_POSITION = "unknown_position"
    INVALID_ID = "invalid_id"
    HISTORY_LOST = "history_lost"


class ServiceError(Exception):
    """Base of every error the service raises on purpose; ``reason`` is safe to show."""

    status_code = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthError(ServiceError):
    status_code = 401


class LimitError(ServiceError):
    status_code = 429


class UserLimitError(LimitError):
    status_code = 429


class CapacityError(LimitError):
    status_code = 503

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class EventError(ServiceError):
    """A delivered event that no retry can fix (malformed, too large, unknown shape)."""

    status_code = 422


class BackendUnavailable(ServiceError):
    """The history backend cannot be reached; the caller should retry later."""

    status_code = 503


def http_status(exc: BaseException) -> int:
    return exc.status_code if isinstance(exc, ServiceError) else 500


def dapr_status(exc: BaseException | None) -> DaprStatus:
    if exc is None:
        return DaprStatus.SUCCESS
    if isinstance(exc, EventError):
        return DaprStatus.DROP
    return DaprStatus.RETRY
