"""Better Auth's JWT plugin, as this service meets it: EdDSA (Ed25519) tokens whose keys
are published at ``<base URL>/api/auth/jwks``, with ``iss`` and ``aud`` set to the base URL.

The key set and the tokens are shaped exactly as that plugin makes them (with the jose
library): keys as ``{"crv", "x", "kty", "kid"}`` (newer releases add ``"alg"``), a
protected header of ``alg`` and ``kid`` only, and the user's fields beside the
registered claims.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from support import Service, running_service
from support.jwks import JwksServer
from test_auth import assert_refused_stream, assert_stream_of

pytestmark = pytest.mark.timeout(60)

BASE_URL = "http://localhost:3000"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class BetterAuth:
    """The two things of a Better Auth server this service sees: its key set, served
    over HTTP as ``GET /api/auth/jwks``, and the tokens its ``/api/auth/token`` signs."""

    def __init__(self, with_alg: bool) -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex[:21]  # a nanoid-length id
        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        entry: dict[str, Any] = {"crv": "Ed25519", "x": _b64(public), "kty": "OKP",
                                 "kid": self.kid}
        if with_alg:
            entry["alg"] = "EdDSA"
        self._entry = entry
        self._jwks = JwksServer([self], path="/api/auth/jwks")

    def jwk(self) -> dict[str, Any]:
        return self._entry

    @property
    def jwks_url(self) -> str:
        return self._jwks.url

    def token(self, user_id: str, **overrides: Any) -> str:
        now = int(time.time())
        payload = {
            # The user's fields, as the plugin's default payload carries them...
            "id": user_id, "email": f"{user_id}@example.com", "emailVerified": True,
            "name": "Ada", "image": None, "createdAt": "2026-11-01T09:00:00.000Z",
            "updatedAt": "2026-11-01T09:00:00.000Z",
            # ...and the registered claims it sets (15 minutes by default).
            "iat": now, "iss": BASE_URL, "aud": BASE_URL, "exp": now + 900, "sub": user_id,
            **overrides,
        }
        # jose's SignJWT with setProtectedHeader({alg, kid}): no "typ".
        return jwt.encode(payload, self.key, algorithm="EdDSA",
                          headers={"kid": self.kid, "typ": None})

    def close(self) -> None:
        self._jwks.close()


@pytest.fixture(scope="module", params=[True, False], ids=["keys-with-alg", "keys-without-alg"])
def better_auth(request) -> Iterator[BetterAuth]:
    server = BetterAuth(with_alg=request.param)
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, better_auth) -> Iterator[Service]:
    # The recipe of docs/deploy.md: the key set's URL, and the base URL as both
    # audience and issuer; no shared secret at all.
    with running_service(tmp_path_factory.mktemp("better-auth"), SSE_JWT_SECRET="",
                         jwks_url=better_auth.jwks_url, jwt_audience=BASE_URL,
                         jwt_issuer=BASE_URL) as svc:
        yield svc


def test_the_token_is_shaped_as_better_auth_signs_it(better_auth):
    token = better_auth.token("u1")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": better_auth.kid}


async def test_a_better_auth_token_opens_its_users_stream(service, better_auth, open_stream):
    uid = f"user_{uuid.uuid4().hex[:8]}"
    stream = await open_stream(service, token=better_auth.token(uid))
    await assert_stream_of(stream, service, uid)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"aud": "http://other.example"}, "wrong audience"),
    ({"iss": "http://other.example"}, "wrong issuer"),
    ({"exp": int(time.time()) - 60}, "token expired"),
])
async def test_claims_not_for_this_deployment_are_refused(
    service, better_auth, open_stream, overrides, reason
):
    await assert_refused_stream(open_stream, service, reason,
                                token=better_auth.token("u2", **overrides))


async def test_a_token_signed_with_the_better_auth_secret_is_not_a_jwks_token(
    service, open_stream
):
    # BETTER_AUTH_SECRET signs Better Auth's session cookies (HS256); it is not the
    # key of the JWT plugin. With no SSE_JWT_SECRET configured, HS256 is refused.
    forged = jwt.encode({"sub": "u3", "exp": int(time.time()) + 60}, "better-auth-secret-" * 3,
                        algorithm="HS256")
    await assert_refused_stream(open_stream, service, "algorithm 'HS256' is not allowed",
                                token=forged)
