"""Bearer-token authentication: HS256 with a shared secret, or keys from a JWKS URL.

The algorithm comes from an allow-list and decides the key source: HMAC
algorithms only ever meet ``SSE_JWT_SECRET``, asymmetric ones only JWKS keys
of a matching type, so an HS/RS confusion cannot verify.  ``none`` is never
accepted.  JWKS keys are cached and refetched on an unknown ``kid`` (at most
once every few seconds, so a flood of forged kids cannot hammer the issuer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .config import ASYMMETRIC_ALGORITHMS, SYMMETRIC_ALGORITHMS, Settings
from .errors import AuthError

__all__ = ["Authenticator", "Identity", "mint_token"]

logger = logging.getLogger(__name__)

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_MIN_REFETCH_SECONDS = 5.0

#: (kty, alg or None, key) for each JWKS entry, by kid.
_Key = tuple[str, str | None, jwt.PyJWK]


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float


def mint_token(secret: str, user_id: str, ttl_seconds: int, **claims: Any) -> str:
    """A development HS256 token (``sse-service token`` and the demo page)."""
    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


class Authenticator:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        if settings.jwt_secret is None and not settings.jwks_url:
            raise ValueError("set SSE_JWT_SECRET (or BETTER_AUTH_SECRET) or SSE_JWKS_URL")
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks_url = settings.jwks_url
        self._jwks_ttl = settings.jwks_cache_seconds
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._http = http
        self._keys: dict[str, _Key] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise AuthError(f"algorithm {algorithm!r} is not allowed")
        key = await self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid signature") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise AuthError("invalid subject")
        return Identity(user_id=subject, expires_at=float(claims["exp"]) + self._leeway)

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm in SYMMETRIC_ALGORITHMS:
            if self._secret is None:
                raise AuthError(f"algorithm {algorithm!r} is not allowed")
            return self._secret
        if algorithm not in ASYMMETRIC_ALGORITHMS or not self._jwks_url:
            raise AuthError(f"algorithm {algorithm!r} is not allowed")
        key_type, key_algorithm, key = await self._jwk(kid if isinstance(kid, str) else "")
        if key_type != _KEY_TYPES[algorithm[:2]] or key_algorithm not in (None, algorithm):
            raise AuthError("signing key does not match the token's algorithm")
        return key.key

    async def _jwk(self, kid: str) -> _Key:
        now = time.monotonic()
        key = self._keys.get(kid)
        if key is not None and now - self._fetched_at < self._jwks_ttl:
            return key
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= self._jwks_ttl
            if (kid not in self._keys or stale) and now - self._fetched_at >= _MIN_REFETCH_SECONDS:
                await self._fetch_keys()
        key = self._keys.get(kid)
        if key is None and not kid and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise AuthError("unknown signing key")
        return key

    async def _fetch_keys(self) -> None:
        assert self._jwks_url is not None
        http = self._http or httpx.AsyncClient(timeout=5.0)
        try:
            response = await http.get(self._jwks_url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("cannot fetch JWKS from %s: %s", self._jwks_url, exc)
            self._fetched_at = time.monotonic() - self._jwks_ttl + _MIN_REFETCH_SECONDS
            return
        finally:
            if self._http is None:
                await http.aclose()
        keys: dict[str, _Key] = {}
        for data in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWTError, TypeError, ValueError) as exc:
                logger.info("skipping JWKS key %s: %s", data.get("kid"), exc)
                continue
            keys[str(data.get("kid", ""))] = (str(data.get("kty")), data.get("alg"), key)
        self._keys = keys
        self._fetched_at = time.monotonic()
        logger.info("loaded %d signing keys from %s", len(keys), self._jwks_url)
