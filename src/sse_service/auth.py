"""Who is asking: the credential a stream request carries, and the token in it verified.

A stream's token comes from, in this order, ``Authorization: Bearer``, the
``sse_token`` cookie, and (only with ``SSE_ALLOW_QUERY_TOKEN``) the ``token``
query parameter; the first one present is the only one tried, so an invalid
header token is not rescued by a valid cookie (:func:`credential`).

The algorithm comes from an allow-list and decides the key source: HMAC
algorithms only ever meet ``SSE_JWT_SECRET``, asymmetric ones only JWKS keys
of a matching type (:mod:`.jwks`), so an HS/RS confusion cannot verify.
``none`` is never accepted.  A ``sub`` (never empty) or ``kid`` must be at most
256 characters that UTF-8 can encode, without control characters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeGuard

import httpx
import jwt

from . import tokens
from .config import ASYMMETRIC_ALGORITHMS, SYMMETRIC_ALGORITHMS, Settings
from .errors import AuthError
from .jwks import KeySet
from .logs import escape

__all__ = ["COOKIE_NAME", "Authenticator", "Identity", "credential", "mint_token"]

#: The cookie a browser stream may carry its token in (the demo sets it).
COOKIE_NAME = "sse_token"

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_MAX_ID_CHARS = 256
# Control characters, line separators and surrogates: a surrogate left in a
# decoded JSON string is a lone one, which UTF-8 cannot encode.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

class Identity(NamedTuple):
    user_id: str
    expires_at: float
    #: The token's ``iat`` (whole seconds); ``None`` when it has none.
    issued_at: float | None = None


def mint_token(secret: str, user_id: str, ttl_seconds: int, **claims: Any) -> str:
    """A development HS256 token (``sse-service token`` and the demo page)."""
    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def credential(headers: Mapping[str, str], query: Mapping[str, list[str]],
               allow_query: bool) -> str | None:
    """The request's token: from the first source present (see the module docstring)."""
    token = _bearer(headers.get("authorization")) or _cookie(headers.get("cookie"))
    if not token and allow_query:
        token = query.get("token", [""])[0]
    return token or None


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _cookie(value: str | None) -> str | None:
    for part in (value or "").split(";"):
        name, _, token = part.strip().partition("=")
        if name == COOKIE_NAME:
            return token.strip('"')
    return None


def _is_safe_id(value: object) -> TypeGuard[str]:
    return (isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS
            and _UNSAFE.search(value) is None)


class Authenticator:
    """Verifies tokens; ``clock`` times the JWKS cache and its refetch interval."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settings.jwt_secret is None and not settings.jwks_url:
            raise ValueError("set SSE_JWT_SECRET (or BETTER_AUTH_SECRET) or SSE_JWKS_URL")
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._secret_bytes = self._secret.encode() if self._secret is not None else b""
        self._hmacs: dict[str, tokens.KeyedHmac] = {}
        self._headers = tokens.HeaderCache()
        self._keys = KeySet(settings.jwks_url, settings.jwks_cache_seconds, http, clock) \
            if settings.jwks_url else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._algorithms = frozenset(settings.jwt_algorithms)

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing token")
        parsed = tokens.parse(token, self._headers)
        algorithm = parsed.header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise AuthError(f"algorithm {escape(repr(algorithm), 60)} is not allowed")
        if algorithm in SYMMETRIC_ALGORITHMS:
            tokens.verify_hmac(parsed, algorithm, self._keyed(algorithm))
        else:
            key = await self._key_for(algorithm, parsed.header.get("kid"))
            tokens.verify_signature(parsed, algorithm, key)
        claims = tokens.claims_of(
            parsed, time.time(), self._leeway, self._audience, self._issuer
        )
        subject = claims.subject
        if not _is_safe_id(subject):
            raise AuthError("invalid subject")
        return Identity(user_id=subject, expires_at=claims.expires + self._leeway,
                        issued_at=claims.issued_at)

    async def close(self) -> None:
        """Abandon a JWKS fetch in flight (at shutdown)."""
        if self._keys is not None:
            await self._keys.close()

    def _keyed(self, algorithm: str) -> tokens.KeyedHmac:
        keyed = self._hmacs.get(algorithm)
        if keyed is None:
            if self._secret is None:
                raise AuthError(f"algorithm {algorithm!r} is not allowed")
            keyed = self._hmacs[algorithm] = tokens.keyed_hmac(algorithm, self._secret_bytes)
        return keyed

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm not in ASYMMETRIC_ALGORITHMS or self._keys is None:
            raise AuthError(f"algorithm {algorithm!r} is not allowed")
        if kid is None or kid == "":
            kid = ""
        elif not _is_safe_id(kid):
            raise AuthError("invalid key id")
        key_type, key_algorithm, key = await self._keys.key(kid)
        if key_type != _KEY_TYPES[algorithm[:2]] or key_algorithm not in (None, algorithm):
            raise AuthError("signing key does not match the token's algorithm")
        return key.key
