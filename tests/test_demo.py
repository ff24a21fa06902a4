"""The demo's token helpers: off by default, and when on, for local clients only."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest

from conftest import SECRET, Service, running_service
from sse_service.demo import is_loopback

pytestmark = pytest.mark.timeout(30)

MINTING = ["/demo/token", "/demo/session"]
# What a proxy on the same host adds; every value claims a local client.
FORWARDING = {
    "x-forwarded-for": "127.0.0.1",
    "forwarded": "for=127.0.0.1",
    "x-real-ip": "127.0.0.1",
    "x-forwarded-host": "127.0.0.1:8005",
    "x-forwarded-proto": "http",
    "x_forwarded_for": "127.0.0.1",
    "X-Forwarded-For": "::1",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("demo"), demo_page=True) as svc:
        yield svc


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Demo on, with uvicorn told to believe X-Forwarded-For from anyone."""
    with running_service(tmp_path_factory.mktemp("trusting"), demo_page=True,
                         FORWARDED_ALLOW_IPS="*") as svc:
        yield svc


def assert_refused(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 403, reply.text
    assert reply.headers["content-type"] == "application/json"
    detail = reply.json()["detail"]
    assert "only minted for local clients" in detail and reason in detail, detail
    assert "set-cookie" not in reply.headers
    assert "token" not in reply.json()


def test_demo_routes_are_off_by_default(start_service):
    service = start_service()
    for method, path in [("GET", "/"), ("POST", "/demo/token"), ("POST", "/demo/session"),
                         ("DELETE", "/demo/session")]:
        reply = httpx.request(method, f"{service.url}{path}", json={"user": "42"})
        assert reply.status_code == 404, (path, reply.status_code)


def test_local_client_gets_a_dev_token(demo):
    reply = httpx.post(f"{demo.url}/demo/token", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    claims = jwt.decode(reply.json()["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"


def test_local_client_gets_a_session_cookie(demo):
    reply = httpx.post(f"{demo.url}/demo/session", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    assert reply.headers["set-cookie"].startswith("sse_token=")


@pytest.mark.parametrize("path", MINTING)
@pytest.mark.parametrize(("header", "value"), FORWARDING.items(), ids=list(FORWARDING))
def test_a_request_with_a_forwarding_header_is_refused(demo, path, header, value):
    reply = httpx.post(f"{demo.url}{path}", json={"user": "42"}, headers={header: value})
    assert_refused(reply, "came through a proxy")


@pytest.mark.parametrize("path", MINTING)
@pytest.mark.parametrize("claimed", ["127.evil.example", "127.0.0.1", "203.0.113.9"])
def test_forwarded_for_is_refused_even_when_uvicorn_trusts_it(trusting, path, claimed):
    # With FORWARDED_ALLOW_IPS=* uvicorn replaces the peer address with the
    # header's claim ("127.evil.example" started with "127.").
    reply = httpx.post(f"{trusting.url}{path}", json={"user": "42"},
                       headers={"x-forwarded-for": claimed})
    assert_refused(reply, "came through a proxy")


def test_refused_before_the_body_is_validated(demo):
    # No hint about what a valid request would look like.
    reply = httpx.post(f"{demo.url}/demo/token", json={"user": "", "ttl": 10**9},
                       headers={"x-forwarded-for": "127.0.0.1"})
    assert_refused(reply, "came through a proxy")


def test_any_loopback_peer_counts_as_local(demo):
    # 127.0.0.6 is where an Istio-style sidecar connects from: a loopback
    # address like any other, which is why the demo stays off beside one.
    transport = httpx.HTTPTransport(local_address="127.0.0.6")
    with httpx.Client(transport=transport, timeout=10) as client:
        reply = client.post(f"{demo.url}/demo/token", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    demo.wait_for_log('127.0.0.6:')


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.6", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:127.0.0.6", True),
        ("localhost", False),
        ("127.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),
        ("128.0.0.1", False),
        ("", False),
        (" 127.0.0.1", False),
    ],
)
def test_is_loopback_accepts_loopback_addresses_only(host, local):
    assert is_loopback(host) is local
