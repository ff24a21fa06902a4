"""Bearer-token authentication: HS256 with a shared secret, or keys from a JWKS URL.

The algorithm comes from an allow-list and decides the key source: HMAC
algorithms only ever meet ``SSE_JWT_SECRET``, asymmetric ones only JWKS keys
of a matching type, so an HS/RS confusion cannot verify.  ``none`` is never
accepted.  A ``sub`` (never empty) or ``kid`` must be at most 256 characters
that UTF-8 can encode, without control characters.

JWKS keys are cached by ``kid`` for ``SSE_JWKS_CACHE_SECONDS``.  The issuer is
asked at most once per :data:`JWKS_REFETCH_SECONDS` (5 s from the end of the
last fetch, failed or not), so forged kids cannot hammer it, and one fetch at a
time, shared by every request that needs it.  A cached key never waits: past
its TTL it keeps serving while a refresh runs in the background.  An unknown
``kid`` waits for the fetch, at most :data:`JWKS_FETCH_TIMEOUT_SECONDS` (5 s, the
bound on a whole fetch), which reads at most :data:`JWKS_MAX_BYTES` (1 MiB).  A
failed fetch or a malformed key set is a logged warning and keeps the keys
loaded before.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import httpx
import jwt

from . import tokens
from .config import ASYMMETRIC_ALGORITHMS, SYMMETRIC_ALGORITHMS, Settings, redact_url
from .errors import AuthError
from .logs import escape

__all__ = ["JWKS_FETCH_TIMEOUT_SECONDS", "JWKS_MAX_BYTES", "JWKS_REFETCH_SECONDS",
           "Authenticator", "Identity", "mint_token"]

logger = logging.getLogger(__name__)

#: The least time between the end of one JWKS fetch and the start of the next.
JWKS_REFETCH_SECONDS = 5.0
#: The longest one JWKS fetch may take (connect, headers and body together).
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
#: The largest JWKS response read; a longer one is abandoned unread.
JWKS_MAX_BYTES = 1 << 20

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_MAX_ID_CHARS = 256
# Control characters, line separators and surrogates: a surrogate left in a
# decoded JSON string is a lone one, which UTF-8 cannot encode.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

#: (kty, alg or None, key) for each JWKS entry, by kid.
_Key = tuple[str, str | None, jwt.PyJWK]


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float
    #: The token's ``iat`` (whole seconds); ``None`` when it has none.
    issued_at: float | None = None


class _JwksError(Exception):
    """A JWKS response that cannot be used as a key set."""


def mint_token(secret: str, user_id: str, ttl_seconds: int, **claims: Any) -> str:
    """A development HS256 token (``sse-service token`` and the demo page)."""
    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_seconds, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


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
        self._hmacs: dict[str, hmac.HMAC] = {}
        self._headers = tokens.HeaderCache()
        self._jwks_url = settings.jwks_url
        self._jwks_ttl = settings.jwks_cache_seconds
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._http = http
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._loaded_at = float("-inf")
        self._tried_at = float("-inf")
        self._fetch: asyncio.Task[None] | None = None

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
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.wait([self._fetch])

    def _keyed(self, algorithm: str) -> hmac.HMAC:
        keyed = self._hmacs.get(algorithm)
        if keyed is None:
            if self._secret is None:
                raise AuthError(f"algorithm {algorithm!r} is not allowed")
            keyed = self._hmacs[algorithm] = tokens.keyed_hmac(algorithm, self._secret_bytes)
        return keyed

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm not in ASYMMETRIC_ALGORITHMS or not self._jwks_url:
            raise AuthError(f"algorithm {algorithm!r} is not allowed")
        if kid is None or kid == "":
            kid = ""
        elif not _is_safe_id(kid):
            raise AuthError("invalid key id")
        key_type, key_algorithm, key = await self._jwk(kid)
        if key_type != _KEY_TYPES[algorithm[:2]] or key_algorithm not in (None, algorithm):
            raise AuthError("signing key does not match the token's algorithm")
        return key.key

    async def _jwk(self, kid: str) -> _Key:
        key = self._cached(kid)
        if key is not None:
            if self._clock() - self._loaded_at >= self._jwks_ttl:
                self._refresh()  # in the background: a known key never waits
            return key
        fetch = self._refresh()
        if fetch is not None:
            # asyncio.wait never cancels the fetch, which other requests share.
            await asyncio.wait([fetch], timeout=JWKS_FETCH_TIMEOUT_SECONDS)
        key = self._cached(kid)
        if key is None:
            raise AuthError("unknown signing key")
        return key

    def _cached(self, kid: str) -> _Key | None:
        key = self._keys.get(kid)
        if key is None and not kid and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        return key

    def _refresh(self) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one if the refetch interval allows it."""
        if self._fetch is None and self._clock() - self._tried_at >= JWKS_REFETCH_SECONDS:
            self._fetch = asyncio.create_task(self._fetch_keys())
            self._fetch.add_done_callback(self._fetched)
        return self._fetch

    def _fetched(self, _: asyncio.Task[None]) -> None:
        # A done callback, so that it also runs for a fetch cancelled before it started.
        self._fetch = None
        self._tried_at = self._clock()

    async def _fetch_keys(self) -> None:
        assert self._jwks_url is not None
        where = redact_url(self._jwks_url)
        try:
            async with asyncio.timeout(JWKS_FETCH_TIMEOUT_SECONDS):
                body = await self._download(self._jwks_url)
            keys = _parse_jwks(body)
        except TimeoutError:
            reason = f"no complete answer within {JWKS_FETCH_TIMEOUT_SECONDS:g}s"
        except (httpx.HTTPError, _JwksError) as exc:
            reason = str(exc) or type(exc).__name__
        except Exception:
            logger.exception("fetching JWKS from %s failed unexpectedly", where)
            return
        else:
            self._keys = keys
            self._loaded_at = self._clock()
            logger.info("loaded %d signing keys from %s", len(keys), where)
            return
        logger.warning("cannot use JWKS from %s, keeping %d signing keys: %s",
                       where, len(self._keys), escape(reason))

    async def _download(self, url: str) -> bytes:
        http = self._http or httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_SECONDS)
        # Identity encoding: the size cap then bounds what is held in memory,
        # where a small compressed chunk could inflate a thousandfold.
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        try:
            async with http.stream("GET", url, headers=headers) as response:
                response.raise_for_status()
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("", "identity"):
                    raise _JwksError(f"compressed response ({encoding}) despite identity")
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise _JwksError(f"response larger than {JWKS_MAX_BYTES} bytes")
                return bytes(body)
        finally:
            if self._http is None:
                await http.aclose()


def _parse_jwks(body: bytes) -> dict[str, _Key]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _JwksError("response is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _JwksError("not a key set: 'keys' must be a list of objects")
    keys: dict[str, _Key] = {}
    for entry in entries:
        kid, algorithm = entry.get("kid", ""), entry.get("alg")
        if not isinstance(kid, str) or not isinstance(algorithm, str | None):
            logger.info("skipping a JWKS key: kid %s or alg %s is not a string",
                        escape(kid), escape(algorithm))
            continue
        try:
            keys[kid] = (str(entry.get("kty")), algorithm, jwt.PyJWK(entry))
        # The entry is foreign data; whatever the parser raises only skips it.
        except Exception as exc:
            logger.info("skipping JWKS key %s: %s", escape(kid), escape(str(exc)))
    if entries and not keys:
        raise _JwksError(f"none of its {len(entries)} keys is usable")
    return keys
