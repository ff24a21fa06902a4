"""errors.py: each error carries its own HTTP answer."""

from __future__ import annotations

import pytest

from sse_service.errors import (
    AuthError,
    BackendUnavailable,
    CapacityError,
    EventError,
    LimitError,
    ServiceError,
    UserLimitError,
)


@pytest.mark.parametrize(("error", "status", "headers"), [
    (AuthError("token expired"), 401, [(b"www-authenticate", b'Bearer error="invalid_token"')]),
    (UserLimitError("too many"), 429, []),
    (CapacityError("full", retry_after=3), 503, [(b"retry-after", b"3")]),
    (CapacityError("full"), 503, [(b"retry-after", b"5")]),
    (BackendUnavailable("redis is down"), 503, []),
    (EventError("malformed"), 422, []),
])
def test_an_error_carries_its_status_headers_and_reason(
    error: ServiceError, status: int, headers: list[tuple[bytes, bytes]],
) -> None:
    assert (error.status_code, error.headers) == (status, headers)
    assert error.reason == str(error)


def test_the_limits_share_a_base_and_every_error_is_a_service_error() -> None:
    assert issubclass(UserLimitError, LimitError) and issubclass(CapacityError, LimitError)
    for kind in (AuthError, LimitError, EventError, BackendUnavailable):
        assert issubclass(kind, ServiceError)
