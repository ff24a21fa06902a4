"""Authentication of ``GET /events`` against a real server.

Token sources (header, cookie, query) and their precedence; every rejection
is a 401 with a JSON ``detail``; JWKS keys come from a real local HTTP server
whose key set can be rotated; expiry ends a live stream; query tokens never
reach the logs; secrets never show in ``repr(Settings)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sse_service.config import Settings
from sse_service.jwks import JWKS_REFETCH_SECONDS
from sse_service.logs import redact
from support import SECRET, Service, aeventually, make_token, running_service
from support.jwks import JwksServer, jwks_server

pytestmark = pytest.mark.timeout(30)


AUDIENCE = "sse-api"
ISSUER = "https://auth.example.test"


# -- a JWKS issuer ---------------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        jwk = jwt.get_algorithm_by_name(self.alg).to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, user: str, ttl: float = 3600, alg: str | None = None, **claims: Any) -> str:
        now = time.time()
        payload = {"sub": user, "iat": int(now), "exp": now + ttl, **claims}
        return jwt.encode(payload, self.private, algorithm=alg or self.alg,
                          headers={"kid": self.kid})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


# -- services ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    """HS256 with the shared secret, default settings."""
    with running_service(tmp_path_factory.mktemp("auth")) as svc:
        yield svc


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": rsa_key("rsa-1"), "ec": ec_key("ec-1"), "ed": ed_key("ed-1")}


@pytest.fixture(scope="module")
def issuer(keys) -> Iterator[JwksServer]:
    with jwks_server(list(keys.values())) as server:
        yield server


@pytest.fixture(scope="module")
def jwks_service(tmp_path_factory, issuer) -> Iterator[Service]:
    """JWKS keys plus the shared secret (the allow-list has HS256, RS256, ES256, EdDSA)."""
    with running_service(tmp_path_factory.mktemp("jwks"), jwks_url=issuer.url) as svc:
        yield svc


def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to write ``none`` or to HMAC with a PEM)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(user_id: str, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"sub": user_id, "iat": int(now), "exp": int(now + ttl), **extra}


def get_events(service: Service, headers: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> httpx.Response:
    """A request expected to be refused (a 200 would stream forever, hence the timeout)."""
    return httpx.get(f"{service.url}/events", headers=headers, params=params, timeout=5)


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": reason}
    assert response.headers["www-authenticate"].startswith("Bearer")


async def assert_refused_stream(open_stream, service: Service, reason: str, **kwargs: Any) -> None:
    assert_refused(await open_stream(service, expect=401, **kwargs), reason)


async def assert_stream_of(stream, service: Service, uid: str, task_id: int = 1) -> None:
    """The stream belongs to ``uid``: an event published for ``uid`` arrives on it."""
    service.publish(uid, task_id)
    event = await stream.next()
    assert json.loads(event.data)["task"]["id"] == task_id


# -- token sources -----------------------------------------------------------------


async def test_token_from_authorization_header(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=make_token(uid))
    await assert_stream_of(stream, service, uid)


async def test_authorization_scheme_is_case_insensitive(service, open_stream):
    uid = user()
    stream = await open_stream(service, headers={"authorization": f"bearer {make_token(uid)}"})
    await assert_stream_of(stream, service, uid)


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
async def test_token_from_cookie(service, open_stream, quoted):
    uid = user()
    token = make_token(uid)
    value = f'"{token}"' if quoted else token
    stream = await open_stream(service, headers={"cookie": f"theme=dark; sse_token={value}; x=1"})
    await assert_stream_of(stream, service, uid)


async def test_token_from_query(service, open_stream):
    uid = user()
    stream = await open_stream(service, params={"token": make_token(uid)})
    await assert_stream_of(stream, service, uid)


async def test_query_token_refused_when_disabled(start_service, open_stream):
    svc = start_service(allow_query_token=False)
    uid = user()
    await assert_refused_stream(open_stream, svc, "missing token",
                                params={"token": make_token(uid)})
    stream = await open_stream(svc, token=make_token(uid))  # headers still work
    await assert_stream_of(stream, svc, uid)


async def test_header_wins_over_cookie_and_query(service, open_stream):
    by_header, by_cookie, by_query = user(), user(), user()
    stream = await open_stream(service, token=make_token(by_header),
                               headers={"cookie": f"sse_token={make_token(by_cookie)}"},
                               params={"token": make_token(by_query)})
    service.publish(by_cookie, 1)
    service.publish(by_query, 2)
    service.publish(by_header, 3)
    event = await stream.next()
    assert json.loads(event.data)["task"]["id"] == 3


async def test_cookie_wins_over_query(service, open_stream):
    by_cookie, by_query = user(), user()
    stream = await open_stream(service, headers={"cookie": f"sse_token={make_token(by_cookie)}"},
                               params={"token": make_token(by_query)})
    service.publish(by_query, 1)
    service.publish(by_cookie, 2)
    event = await stream.next()
    assert json.loads(event.data)["task"]["id"] == 2


async def test_an_invalid_header_token_is_not_rescued_by_a_valid_cookie(service, open_stream):
    uid = user()
    await assert_refused_stream(open_stream, service, "invalid signature",
                                token=make_token(uid, secret="another-secret-" + "x" * 32),
                                headers={"cookie": f"sse_token={make_token(uid)}"})


# -- rejections ----------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


REJECTIONS: dict[str, tuple[Any, str]] = {
    "malformed": (lambda uid: "not-a-jwt", "malformed token"),
    "malformed-segments": (lambda uid: "a.b.c", "malformed token"),
    "bad-signature": (lambda uid: make_token(uid, secret="wrong-secret-" + "y" * 32),
                      "invalid signature"),
    "tampered-payload": (lambda uid: ".".join([
        make_token(uid).split(".")[0], b64url(json.dumps(claims("someone-else")).encode()),
        make_token(uid).split(".")[2]]), "invalid signature"),
    "expired": (lambda uid: make_token(uid, ttl=-60), "token expired"),
    "not-yet-valid": (lambda uid: make_token(uid, nbf=_now() + 60), "token not yet valid"),
    "missing-sub": (lambda uid: jwt.encode({"exp": _now() + 60}, SECRET, algorithm="HS256"),
                    "missing claim 'sub'"),
    "missing-exp": (lambda uid: jwt.encode({"sub": uid}, SECRET, algorithm="HS256"),
                    "missing claim 'exp'"),
    "empty-sub": (lambda uid: make_token(""), "invalid subject"),
    "numeric-sub": (lambda uid: jwt.encode({"sub": 42, "exp": _now() + 60}, SECRET,
                                           algorithm="HS256"), "invalid token"),
    "alg-none": (lambda uid: forge({"alg": "none", "typ": "JWT"}, claims(uid), None),
                 "algorithm 'none' is not allowed"),
    "alg-None-cased": (lambda uid: forge({"alg": "None", "typ": "JWT"}, claims(uid), None),
                       "algorithm 'None' is not allowed"),
    "alg-missing": (lambda uid: forge({"typ": "JWT"}, claims(uid), SECRET.encode()),
                    "algorithm None is not allowed"),
    "alg-not-allowed": (lambda uid: jwt.encode(claims(uid), SECRET * 2, algorithm="HS384"),
                        "algorithm 'HS384' is not allowed"),
    "asymmetric-without-jwks": (lambda uid: jwt.encode(
        claims(uid), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        "algorithm 'ES256' is not allowed"),
}


@pytest.mark.parametrize("case", REJECTIONS)
async def test_rejected_token_gets_401_with_reason(service, open_stream, case):
    build, reason = REJECTIONS[case]
    await assert_refused_stream(open_stream, service, reason, token=build(user()))


async def test_missing_token_gets_401(service, open_stream):
    await assert_refused_stream(open_stream, service, "missing token")
    await assert_refused_stream(open_stream, service, "missing token",
                                headers={"authorization": "Bearer"})
    await assert_refused_stream(open_stream, service, "missing token",
                                headers={"authorization": f"Basic {make_token(user())}"})
    await assert_refused_stream(open_stream, service, "missing token", params={"token": ""})


async def test_expiry_within_leeway_is_accepted(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=make_token(uid, ttl=-3))  # leeway is 10 s
    await assert_stream_of(stream, service, uid)


@pytest.fixture(scope="module")
def audience_service(tmp_path_factory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("aud"), jwt_audience=AUDIENCE,
                         jwt_issuer=ISSUER) as svc:
        yield svc


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"aud": "other-api", "iss": ISSUER}, "wrong audience"),
        ({"aud": ["x", "y"], "iss": ISSUER}, "wrong audience"),
        ({"aud": AUDIENCE, "iss": "https://evil.example.test"}, "wrong issuer"),
        ({"iss": ISSUER}, "missing claim 'aud'"),
        ({"aud": AUDIENCE}, "missing claim 'iss'"),
    ],
    ids=["audience", "audience-list", "issuer", "no-aud", "no-iss"],
)
async def test_audience_and_issuer_are_checked_when_configured(
        audience_service, open_stream, extra, reason):
    await assert_refused_stream(open_stream, audience_service, reason,
                                token=make_token(user(), **extra))


@pytest.mark.parametrize("aud", [AUDIENCE, ["other", AUDIENCE]], ids=["string", "list"])
async def test_right_audience_and_issuer_are_accepted(audience_service, open_stream, aud):
    uid = user()
    stream = await open_stream(audience_service, token=make_token(uid, aud=aud, iss=ISSUER))
    await assert_stream_of(stream, audience_service, uid)


async def test_issuer_is_ignored_when_not_configured(service, open_stream):
    uid = user()
    stream = await open_stream(service, token=make_token(uid, iss="anyone"))
    await assert_stream_of(stream, service, uid)


async def test_a_token_for_some_audience_is_refused_when_none_is_configured(
        service, open_stream):
    # PyJWT's rule, kept: a token scoped to an audience is not accepted by a
    # service that cannot say it is that audience.
    await assert_refused_stream(open_stream, service, "wrong audience",
                                token=make_token(user(), aud="anything"))


# -- JWKS --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
async def test_jwks_signed_tokens_are_accepted(jwks_service, open_stream, keys, kind):
    uid = user()
    stream = await open_stream(jwks_service, token=keys[kind].token(uid))
    await assert_stream_of(stream, jwks_service, uid)


async def test_shared_secret_still_works_beside_jwks(jwks_service, open_stream):
    uid = user()
    stream = await open_stream(jwks_service, token=make_token(uid))
    await assert_stream_of(stream, jwks_service, uid)


async def test_token_signed_by_a_foreign_key_with_a_known_kid_is_refused(
        jwks_service, open_stream):
    impostor = SigningKey("rsa-1", "RS256", rsa.generate_private_key(65537, 2048))
    await assert_refused_stream(open_stream, jwks_service, "invalid signature",
                                token=impostor.token(user()))


async def test_algorithm_must_match_the_key_type(jwks_service, open_stream, keys):
    # An ES256 token whose kid names the RSA key.
    crossed = SigningKey("rsa-1", "ES256", keys["ec"].private)
    await assert_refused_stream(open_stream, jwks_service,
                                "signing key does not match the token's algorithm",
                                token=crossed.token(user()))


async def test_asymmetric_algorithm_outside_the_allow_list_is_refused(
        jwks_service, open_stream, keys):
    await assert_refused_stream(open_stream, jwks_service, "algorithm 'RS384' is not allowed",
                                token=keys["rsa"].token(user(), alg="RS384"))


async def test_hs256_signed_with_the_public_key_pem_is_refused(jwks_service, open_stream, keys):
    """HS/RS confusion: the public key, which anyone can fetch, used as an HMAC secret."""
    pem = keys["rsa"].public_pem()
    forged = forge({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(user()), pem)
    await assert_refused_stream(open_stream, jwks_service, "invalid signature", token=forged)
    jwk_json = json.dumps(keys["rsa"].jwk()).encode()
    forged = forge({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(user()), jwk_json)
    await assert_refused_stream(open_stream, jwks_service, "invalid signature", token=forged)


async def test_hs256_is_refused_when_only_jwks_is_configured(start_service, open_stream, keys):
    with jwks_server([keys["rsa"]]) as server:
        svc = start_service(jwt_secret="", jwks_url=server.url)
        forged = forge({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(user()),
                       keys["rsa"].public_pem())
        await assert_refused_stream(open_stream, svc, "algorithm 'HS256' is not allowed",
                                    token=forged)
        uid = user()
        stream = await open_stream(svc, token=keys["rsa"].token(uid))
        await assert_stream_of(stream, svc, uid)


async def test_unknown_kid_is_refused(jwks_service, open_stream):
    stranger = rsa_key("never-published")
    await assert_refused_stream(open_stream, jwks_service, "unknown signing key",
                                token=stranger.token(user()))


async def test_jwks_keys_are_cached(start_service, open_stream, keys):
    with jwks_server(list(keys.values())) as server:
        svc = start_service(jwt_secret="", jwks_url=server.url)
        assert server.requests == 0
        for kind in ("rsa", "ec", "ed", "rsa", "ec", "ed"):
            response = await open_stream(svc, expect=401,
                                         token=keys[kind].token(user(), ttl=-3600))
            assert response.json() == {"detail": "token expired"}  # verified, then refused
        uid = user()
        stream = await open_stream(svc, token=keys["ed"].token(uid))
        await assert_stream_of(stream, svc, uid)
        assert server.requests == 1


async def stream_status(service: Service, token: str) -> int:
    """The status ``GET /events`` answers with; a stream that opens is closed at once."""
    async with httpx.AsyncClient(timeout=5) as client:
        async with client.stream("GET", f"{service.url}/events",
                                 headers={"authorization": f"Bearer {token}"}) as response:
            return response.status_code


async def test_jwks_cache_outlives_the_refetch_limit_and_an_unknown_kid_refetches(
        start_service, open_stream):
    old, new, unpublished = rsa_key("2026-01"), ec_key("2026-02"), ed_key("2026-03")
    with jwks_server([old]) as server:
        svc = start_service(jwt_secret="", jwks_url=server.url)
        first = user()
        stream = await open_stream(svc, token=old.token(first))
        await assert_stream_of(stream, svc, first)
        assert server.requests == 1
        # The issuer rotates (the old key is withdrawn). The new kid is unknown:
        # until the refetch limit (5 s after the first fetch) has passed it is
        # refused without asking the issuer, then the key set is fetched once,
        # without a restart.  (That a known kid keeps being served from the
        # cache meanwhile is test_jwks' test on a fake clock.)
        server.keys = [new]

        async def new_kid_accepted() -> bool:
            return await stream_status(svc, new.token(user())) == 200

        await aeventually(new_kid_accepted, JWKS_REFETCH_SECONDS + 5, interval=0.2,
                          message="the rotated key set was never fetched")
        assert server.requests == 2
        second = user()
        stream = await open_stream(svc, token=new.token(second))
        await assert_stream_of(stream, svc, second)
        assert server.requests == 2
        # Right after a fetch, unknown kids do not hammer the issuer.
        for signer in (old, unpublished, old):
            await assert_refused_stream(open_stream, svc, "unknown signing key",
                                        token=signer.token(user()))
        assert server.requests == 2


# -- expiry mid-stream -------------------------------------------------------------------


async def test_token_expiry_ends_the_stream_and_the_token_is_then_refused(
        start_service, open_stream):
    svc = start_service(jwt_leeway_seconds=0)
    uid = user()
    expires = time.time() + 2
    token = jwt.encode({"sub": uid, "exp": expires}, SECRET, algorithm="HS256")
    stream = await open_stream(svc, token=token)
    await assert_stream_of(stream, svc, uid)
    await stream.wait_ended(timeout=10)
    assert time.time() >= expires - 0.05
    assert [(e.event, e.data) for e in stream.remaining()][-1:] == [
        ("close", '{"type":"close","reason":"token_expired"}')]
    await assert_refused_stream(open_stream, svc, "token expired", token=token)


# -- logs and secrets -------------------------------------------------------------------


async def test_query_tokens_never_reach_the_logs(service, open_stream):
    uid = user()
    good = make_token(uid)
    bad = make_token(uid, secret="wrong-secret-" + "z" * 32)
    stream = await open_stream(service, params={"lastEventId": "", "token": good, "n": uid})
    await assert_stream_of(stream, service, uid)
    await assert_refused_stream(open_stream, service, "invalid signature",
                                params={"token": bad, "n": uid})
    service.wait_for_log(f'"GET /events?lastEventId=&token=***&n={uid} HTTP/1.1" 200')
    service.wait_for_log(f'"GET /events?token=***&n={uid} HTTP/1.1" 401')
    logs = service.logs()
    for secret in (good, bad, good.split(".")[2], bad.split(".")[2]):
        assert secret not in logs


async def test_a_percent_encoded_token_parameter_is_masked_too(service, open_stream):
    # The query parser decodes names, so ``tok%65n`` authenticates like ``token``.
    uid = user()
    token = make_token(uid)
    async with httpx.AsyncClient(timeout=5) as client:
        url = f"{service.url}/events?n={uid}&tok%65n={token}"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
    service.wait_for_log(f'"GET /events?n={uid}&tok%65n=*** HTTP/1.1" 200')
    assert token not in service.logs()


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ("/events?token=a.b.c", "/events?token=***"),
        ("/events?lastEventId=e-1&token=a.b.c&x=1", "/events?lastEventId=e-1&token=***&x=1"),
        ("/events?access_token=a.b.c", "/events?access_token=***"),
        ("/events?TOKEN=a.b.c", "/events?TOKEN=***"),
        ("/events?tok%65n=a.b.c", "/events?tok%65n=***"),
        ("/events?a=b?token=a.b.c", "/events?a=b?token=***"),
        ("/x=y?token=a.b.c", "/x=y?token=***"),
        ('"GET /events?token=a.b.c HTTP/1.1" 200', '"GET /events?token=*** HTTP/1.1" 200'),
        ("/events?tokens=1&mytoken=2", "/events?tokens=1&mytoken=2"),
        ("/healthz", "/healthz"),
    ],
)
def test_redact_masks_every_spelling_of_a_token_parameter(line, masked):
    assert redact(line) == masked


def test_secrets_never_show_in_settings_repr():
    settings = Settings(
        _env_file=None,
        jwt_secret="jwt-secret-value-123",
        app_api_token="app-token-value-456",
        redis_url="redis://default:redis-password-789@redis.internal:6379/0",
    )
    shown = [repr(settings), str(settings), repr(settings.model_dump()),
             settings.redis_url_for_logs]
    for text in shown:
        for secret in ("jwt-secret-value-123", "app-token-value-456", "redis-password-789"):
            assert secret not in text, text
    assert settings.redis_url_for_logs == "redis://default:***@redis.internal:6379/0"
    assert settings.jwt_secret.get_secret_value() == "jwt-secret-value-123"
