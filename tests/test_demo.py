"""The demo's token helpers answer local clients only."""

from __future__ import annotations

import httpx
import jwt
import pytest

from conftest import SECRET

pytestmark = pytest.mark.timeout(30)


def test_local_client_gets_a_dev_token(start_service):
    service = start_service()
    reply = httpx.post(f"{service.url}/demo/token", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200
    claims = jwt.decode(reply.json()["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"


@pytest.mark.parametrize("path", ["/demo/token", "/demo/session"])
def test_a_client_behind_a_proxy_is_refused(start_service, path):
    # uvicorn trusts X-Forwarded-For from 127.0.0.1, as it would from a local
    # reverse proxy: the request then comes from the forwarded address.
    service = start_service()
    reply = httpx.post(f"{service.url}{path}", json={"user": "42"},
                       headers={"x-forwarded-for": "203.0.113.9"})
    assert reply.status_code == 403
    assert "local clients" in reply.json()["detail"]
    assert "set-cookie" not in reply.headers
