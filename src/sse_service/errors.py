"""One error hierarchy, with what each error answers over HTTP and to Dapr.

::

    ServiceError
    ├── AuthError              401  bad, missing or expired token (WWW-Authenticate)
    ├── LimitError
    │   ├── UserLimitError     429  too many streams for one user
    │   └── CapacityError      503  process full or draining (with Retry-After)
    ├── EventError             Dapr DROP: the event can never succeed
    └── BackendUnavailable     Dapr RETRY, /readyz 503: transient broker failure

An error carries its HTTP answer (``status_code``, ``headers`` and the
``reason`` a client may see), as Starlette's ``HTTPException`` does, so an
endpoint answers any of them in one call.  Dapr reads a reply
``{"status": "SUCCESS" | "RETRY" | "DROP"}``: :mod:`.ingest` answers DROP for an
``EventError`` only, and RETRY for anything else that goes wrong, never a
silent SUCCESS.

Close and resync reasons are the catalogues :class:`CloseReason` and
:class:`ResyncReason`; nothing spells them as bare strings.
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

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the HTTP answer to this error carries besides its JSON body."""
        return []


class AuthError(ServiceError):
    status_code = 401

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b'Bearer error="invalid_token"')]


class LimitError(ServiceError):
    status_code = 429


class UserLimitError(LimitError):
    status_code = 429


class CapacityError(LimitError):
    status_code = 503

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())]


class EventError(ServiceError):
    """A delivered event that no retry can fix (malformed, too large, unknown shape)."""

    status_code = 422


class BackendUnavailable(ServiceError):
    """The history backend cannot be reached; the caller should retry later."""

    status_code = 503
