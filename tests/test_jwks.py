"""JWKS under attack, and untrusted values in tokens.

An issuer that is down, slow, hostile or broken: a real local HTTP server
whose behaviour each test switches.  The refetch limit and the cache TTL are
driven by a fake clock handed to the :class:`Authenticator`; what a client
sees is checked against a real running service.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from sse_service.auth import Authenticator
from sse_service.config import Settings
from sse_service.errors import AuthError
from sse_service.jwks import JWKS_FETCH_TIMEOUT_SECONDS, JWKS_MAX_BYTES, JWKS_REFETCH_SECONDS
from support import Service, aeventually, make_token, running_service
from support.jwks import JwksServer
from test_auth import SigningKey, b64url, claims, ec_key, rsa_key

pytestmark = pytest.mark.timeout(60)

#: Slack for a shared, busy machine on top of a bound the service promises.
SLACK = 1.5


@pytest.fixture(scope="module")
def known() -> SigningKey:
    return rsa_key("known-1")


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    return rsa_key("never-published")


@pytest.fixture
def issuer(known) -> Iterator[JwksServer]:
    server = JwksServer([known, ec_key("ec-1")])
    try:
        yield server
    finally:
        server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def authenticator(issuer) -> Any:
    """``authenticator(clock=None, cache_seconds=300)`` → an in-process Authenticator."""
    made: list[Authenticator] = []

    def make(clock: Callable[[], float] | None = None,
             cache_seconds: float = 300) -> Authenticator:
        settings = Settings(_env_file=None, jwt_secret=None, jwks_url=issuer.url,
                            jwks_cache_seconds=cache_seconds)
        auth = Authenticator(settings) if clock is None else Authenticator(settings, clock=clock)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        await auth.close()


async def refusal(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as refused:
        await auth.authenticate(token)
    return refused.value.reason


def forged_kid(key: SigningKey) -> str:
    """A token signed by ``key`` that names a kid nobody published."""
    return signed(key, {"alg": key.alg, "typ": "JWT", "kid": "forged-" + uuid.uuid4().hex},
                  claims(user()))


def signed(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A correctly signed token whose header and payload are written by hand."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


# -- the refetch limit ------------------------------------------------------------------


async def test_forged_kids_cost_one_fetch_per_refetch_interval_while_the_issuer_is_down(
        issuer, authenticator, stranger):
    clock = FakeClock()
    auth = authenticator(clock)
    issuer.status = 503
    for _ in range(30):
        assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
    assert issuer.requests == 1
    clock.advance(JWKS_REFETCH_SECONDS - 0.5)
    assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
    assert issuer.requests == 1
    clock.advance(1)
    await asyncio.gather(*(refusal(auth, forged_kid(stranger)) for _ in range(30)))
    assert issuer.requests == 2


async def test_forged_kids_cost_one_fetch_per_refetch_interval_while_the_issuer_answers(
        issuer, authenticator, known, stranger):
    clock = FakeClock()
    auth = authenticator(clock)
    for _ in range(30):
        assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
        assert (await auth.authenticate(known.token("someone"))).user_id == "someone"
    assert issuer.requests == 1
    clock.advance(JWKS_REFETCH_SECONDS - 0.5)
    assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
    assert issuer.requests == 1
    clock.advance(1)
    assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
    assert issuer.requests == 2


async def test_a_known_key_is_served_from_the_cache_past_the_refetch_limit(
        issuer, authenticator, known):
    clock = FakeClock()
    auth = authenticator(clock)  # the cache lasts 300 s, a refetch may come after 5 s
    for _ in range(3):
        assert (await auth.authenticate(known.token(user()))).user_id
        clock.advance(JWKS_REFETCH_SECONDS)
    assert issuer.requests == 1


async def test_requests_needing_a_fetch_share_the_one_in_flight(issuer, authenticator, known):
    clock = FakeClock()
    auth = authenticator(clock)
    await auth.authenticate(known.token(user()))
    # The issuer rotates; twenty connects with the new kid arrive at once.
    rotated = rsa_key("rotated-2")
    issuer.keys = [rotated]
    clock.advance(JWKS_REFETCH_SECONDS)
    identities = await asyncio.gather(*(auth.authenticate(rotated.token(f"u{i}"))
                                        for i in range(20)))
    assert [identity.user_id for identity in identities] == [f"u{i}" for i in range(20)]
    assert issuer.requests == 2


async def test_a_known_key_never_waits_for_a_slow_refresh(issuer, authenticator, known):
    clock = FakeClock()
    auth = authenticator(clock, cache_seconds=60)
    await auth.authenticate(known.token(user()))
    clock.advance(61)  # the cache is stale: the next use refreshes it
    issuer.stall = 10

    async def timed() -> float:
        started = time.monotonic()
        await auth.authenticate(known.token(user()))
        return time.monotonic() - started

    assert max(await asyncio.gather(*(timed() for _ in range(4)))) < 1
    await aeventually(lambda: issuer.requests == 2, 10, interval=0.01,
                      message="the refresh never reached the issuer")  # it is in flight ...
    clock.advance(61)  # ... and outlives another TTL
    assert max(await asyncio.gather(*(timed() for _ in range(4)))) < 1
    assert issuer.requests == 2


async def test_an_unknown_kid_waits_for_the_fetch_at_most_the_fetch_timeout(
        issuer, authenticator, known, stranger):
    # A drip-fed body: every read makes progress, only the bound on the whole
    # fetch ends it.
    issuer.drip = 0.2
    auth = authenticator()
    started = time.monotonic()
    reasons = await asyncio.gather(
        refusal(auth, known.token(user())), refusal(auth, forged_kid(stranger)),
        refusal(auth, forged_kid(stranger)))
    elapsed = time.monotonic() - started
    assert reasons == ["unknown signing key"] * 3
    assert JWKS_FETCH_TIMEOUT_SECONDS - 0.5 < elapsed < JWKS_FETCH_TIMEOUT_SECONDS + SLACK
    assert issuer.requests == 1


async def test_a_jwks_response_is_read_only_up_to_the_size_cap(issuer, authenticator, known):
    issuer.flood = 100_000_000
    auth = authenticator()
    assert await refusal(auth, known.token(user())) == "unknown signing key"
    await asyncio.to_thread(issuer.done.wait, 10)
    # What the client did not read stays in socket buffers, a few MiB at most.
    assert issuer.sent < 16 * JWKS_MAX_BYTES


async def test_a_compressed_jwks_response_is_refused(issuer, authenticator, known, caplog):
    # Inflating is where a small response becomes a large one; identity is asked for.
    issuer.body = gzip.compress(issuer.document())
    issuer.headers = {"content-encoding": "gzip"}
    auth = authenticator()
    assert await refusal(auth, known.token(user())) == "unknown signing key"
    assert "compressed response (gzip)" in caplog.text


# -- malformed key sets -------------------------------------------------------------------


def _doc(value: Any) -> bytes:
    return json.dumps(value).encode()


MALFORMED: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "keys-string": lambda jwk: _doc({"keys": "abc"}),
    "keys-number": lambda jwk: _doc({"keys": 5}),
    "keys-list-of-numbers": lambda jwk: _doc({"keys": [1]}),
    "keys-object": lambda jwk: _doc({"keys": jwk}),
    "keys-null": lambda jwk: _doc({"keys": None}),
    "no-keys": lambda jwk: _doc({"issuer": "x"}),
    "entries-not-objects": lambda jwk: _doc({"keys": [jwk, "x", 7, None]}),
    "unusable-entries": lambda jwk: _doc({"keys": [{"kid": 7}, {"kty": 5}, {"kty": "RSA",
                                                                          "n": []}]}),
    "not-json": lambda jwk: b"<html>502 Bad Gateway</html>",
    "not-utf8": lambda jwk: b'{"keys": "\xff\xfe"}',
    "json-array": lambda jwk: _doc([{"keys": [jwk]}]),
    "deeply-nested": lambda jwk: b"[" * 100_000,
    "oversized": lambda jwk: _doc({"keys": [jwk], "pad": "x" * (JWKS_MAX_BYTES + 1)}),
}


@pytest.mark.parametrize("shape", MALFORMED)
async def test_a_malformed_key_set_keeps_the_keys_loaded_before(
        issuer, authenticator, known, stranger, caplog, shape):
    caplog.set_level(logging.INFO, logger="sse_service.jwks")
    clock = FakeClock()
    auth = authenticator(clock)
    await auth.authenticate(known.token(user()))
    issuer.body = MALFORMED[shape](rsa_key("new-1").jwk())
    clock.advance(JWKS_REFETCH_SECONDS)
    assert await refusal(auth, forged_kid(stranger)) == "unknown signing key"
    assert issuer.requests == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().startswith("cannot use JWKS from ") for r in warnings] == [True]
    assert (await auth.authenticate(known.token("still-in"))).user_id == "still-in"


async def status_of(client: httpx.AsyncClient, service: Service, token: str) -> tuple[int, Any]:
    """What ``GET /events`` answers; a stream that opens is closed at once."""
    async with client.stream("GET", f"{service.url}/events",
                             headers={"authorization": f"Bearer {token}"}) as response:
        if response.status_code == 200:
            return 200, None
        body = await response.aread()
        try:
            return response.status_code, json.loads(body)
        except ValueError:
            return response.status_code, body


REFUSED_UNKNOWN = (401, {"detail": "unknown signing key"})


@pytest.mark.parametrize("shape", MALFORMED)
async def test_a_malformed_key_set_is_a_warning_and_a_401(
        start_service, issuer, known, stranger, shape):
    issuer.body = MALFORMED[shape](known.jwk())
    svc = start_service(jwks_url=issuer.url)
    kidless = signed(known, {"alg": "RS256", "typ": "JWT"}, claims(user()))
    async with httpx.AsyncClient(timeout=10) as client:
        for token in (forged_kid(stranger), kidless, forged_kid(known)):
            assert await status_of(client, svc, token) == REFUSED_UNKNOWN
        assert await status_of(client, svc, make_token(user())) == (200, None)
    svc.wait_for_log("WARNING sse_service.jwks: cannot use JWKS from ")
    assert "Traceback" not in svc.logs()


async def test_a_known_key_still_works_after_a_malformed_refresh(
        start_service, issuer, known, stranger):
    svc = start_service(jwks_url=issuer.url)
    async with httpx.AsyncClient(timeout=10) as client:
        assert await status_of(client, svc, known.token(user())) == (200, None)
        issuer.body = MALFORMED["json-array"](known.jwk())
        # Refetching is allowed again after the refetch interval: probe until it happens.
        async def fetched_again() -> bool:
            if issuer.requests >= 2:
                return True
            assert await status_of(client, svc, forged_kid(stranger)) == REFUSED_UNKNOWN
            return False

        await aeventually(fetched_again, JWKS_REFETCH_SECONDS + 5, interval=0.2,
                          message="the key set was never fetched again")
        svc.wait_for_log("WARNING sse_service.jwks: cannot use JWKS from ")
        assert await status_of(client, svc, forged_kid(stranger)) == REFUSED_UNKNOWN
        assert await status_of(client, svc, known.token(user())) == (200, None)


# -- the issuer down or slow, seen by clients ------------------------------------------------


async def test_forged_kids_make_one_fetch_while_the_issuer_is_down(
        start_service, issuer, stranger):
    issuer.status = 503
    svc = start_service(jwks_url=issuer.url)
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(30):
            assert await status_of(client, svc, forged_kid(stranger)) == REFUSED_UNKNOWN
    assert issuer.requests <= 2


async def test_concurrent_connects_share_one_slow_fetch_bounded_by_its_timeout(
        start_service, issuer, known):
    issuer.stall = 10
    svc = start_service(jwks_url=issuer.url)

    async def timed(client: httpx.AsyncClient) -> tuple[tuple[int, Any], float]:
        started = time.monotonic()
        answer = await status_of(client, svc, known.token(user()))
        return answer, time.monotonic() - started

    async with httpx.AsyncClient(timeout=30) as client:
        results = await asyncio.gather(*(timed(client) for _ in range(4)))
    assert [answer for answer, _ in results] == [REFUSED_UNKNOWN] * 4
    assert max(elapsed for _, elapsed in results) < JWKS_FETCH_TIMEOUT_SECONDS + SLACK
    assert issuer.requests == 1
    svc.wait_for_log("WARNING sse_service.jwks: cannot use JWKS from ")


# -- untrusted subjects and key ids ------------------------------------------------------------


@pytest.fixture(scope="module")
def module_issuer(known) -> Iterator[JwksServer]:
    server = JwksServer([known, ec_key("ec-1")])
    yield server
    server.close()


@pytest.fixture(scope="module")
def jwks_service(tmp_path_factory, module_issuer) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("jwks-attack"),
                         jwks_url=module_issuer.url) as svc:
        yield svc


BAD_SUBJECTS = {
    "lone-surrogate": "\ud800",
    "surrogate-inside": "user-\udc00-1",
    "crlf": "user\r\n1",
    "nul": "user\x00",
    "escape": "user\x1b[31m",
    "del": "user\x7f",
    "c1-next-line": "user\x85",
    "line-separator": "user\u2028",
    "too-long": "u" * 257,
}


@pytest.mark.parametrize("subject", BAD_SUBJECTS.values(), ids=BAD_SUBJECTS.keys())
async def test_a_subject_that_is_not_clean_text_is_refused(jwks_service, known, subject):
    async with httpx.AsyncClient(timeout=10) as client:
        for token in (make_token(subject), known.token(subject)):
            assert await status_of(client, jwks_service, token) == (
                401, {"detail": "invalid subject"})


async def test_a_non_ascii_subject_is_accepted(jwks_service, known):
    async with httpx.AsyncClient(timeout=10) as client:
        for subject in ("müller", "用户-42", "emoji-\U0001f600", "u" * 256):
            assert await status_of(client, jwks_service, known.token(subject)) == (200, None)


BAD_KIDS: dict[str, tuple[Any, str]] = {
    "lone-surrogate": ("\ud800", "invalid key id"),
    "crlf": ("known-1\r\nx", "invalid key id"),
    "nul": ("known-1\x00", "invalid key id"),
    "huge": ("k" * 10_000, "invalid key id"),
    "number": (42, "malformed token"),
    "null": (None, "malformed token"),
    "list": (["known-1"], "malformed token"),
}


@pytest.mark.parametrize("case", BAD_KIDS)
async def test_a_key_id_that_is_not_clean_text_is_refused(jwks_service, known, case):
    kid, reason = BAD_KIDS[case]
    token = signed(known, {"alg": "RS256", "typ": "JWT", "kid": kid}, claims(user()))
    async with httpx.AsyncClient(timeout=10) as client:
        assert await status_of(client, jwks_service, token) == (401, {"detail": reason})
        assert await status_of(client, jwks_service, known.token(user())) == (200, None)


# -- log lines ----------------------------------------------------------------------------------


async def test_a_subject_with_crlf_cannot_forge_a_log_line(jwks_service, known):
    marker = "forged-" + uuid.uuid4().hex
    subject = f"victim\r\n2026-01-01 00:00:00,000 WARNING sse_service.hub: {marker}"
    async with httpx.AsyncClient(timeout=10) as client:
        assert await status_of(client, jwks_service, known.token(subject)) == (
            401, {"detail": "invalid subject"})
        assert await status_of(client, jwks_service, make_token(subject)) == (
            401, {"detail": "invalid subject"})
    assert marker not in jwks_service.logs()


async def test_a_key_id_from_the_key_set_cannot_forge_a_log_line(start_service, issuer, known):
    marker = "forged-" + uuid.uuid4().hex
    broken = {"kty": "RSA", "kid": f"bad\r\n2026-01-01 00:00:00,000 INFO x: {marker}", "n": "!"}
    issuer.body = _doc({"keys": [known.jwk(), broken]})
    svc = start_service(jwks_url=issuer.url)
    async with httpx.AsyncClient(timeout=10) as client:
        assert await status_of(client, svc, known.token(user())) == (200, None)
    svc.wait_for_log("loaded 1 signing keys")
    logs = svc.logs()
    assert f"\\r\\n2026-01-01 00:00:00,000 INFO x: {marker}" in logs
    assert f"\n2026-01-01 00:00:00,000 INFO x: {marker}" not in logs
