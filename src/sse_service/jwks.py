"""The signing keys at a JWKS URL, fetched and cached for :mod:`.auth`.

Keys are cached by ``kid`` for ``SSE_JWKS_CACHE_SECONDS``.  The issuer is asked
at most once per :data:`JWKS_REFETCH_SECONDS` (5 s from the end of the last
fetch, failed or not), so forged kids cannot hammer it, and one fetch at a
time, shared by every request that needs it.  A cached key never waits: past
its TTL it keeps serving while a refresh runs in the background.  An unknown
``kid`` waits for the fetch, at most :data:`JWKS_FETCH_TIMEOUT_SECONDS` (5 s,
the bound on a whole fetch), which reads at most :data:`JWKS_MAX_BYTES`
(1 MiB), uncompressed.  A failed fetch or a malformed key set is a logged
warning and keeps the keys loaded before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx
import jwt

from .config import redact_url
from .errors import AuthError
from .logs import escape

__all__ = ["JWKS_FETCH_TIMEOUT_SECONDS", "JWKS_MAX_BYTES", "JWKS_REFETCH_SECONDS", "KeySet",
           "SigningKey"]

logger = logging.getLogger(__name__)

#: The least time between the end of one JWKS fetch and the start of the next.
JWKS_REFETCH_SECONDS = 5.0
#: The longest one JWKS fetch may take (connect, headers and body together).
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
#: The largest JWKS response read; a longer one is abandoned unread.
JWKS_MAX_BYTES = 1 << 20

#: (kty, alg or None, key) of a JWKS entry.
SigningKey = tuple[str, str | None, jwt.PyJWK]


class _JwksError(Exception):
    """A JWKS response that cannot be used as a key set."""


class KeySet:
    """The keys at ``url``; ``clock`` times the cache and the refetch interval."""

    def __init__(self, url: str, ttl: float, http: httpx.AsyncClient | None,
                 clock: Callable[[], float]) -> None:
        self._jwks_url = url
        self._jwks_ttl = ttl
        self._http = http
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = float("-inf")
        self._tried_at = float("-inf")
        self._fetch: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Abandon a fetch in flight (at shutdown)."""
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.wait([self._fetch])

    async def key(self, kid: str) -> SigningKey:
        """The key for ``kid`` (``""``: the only key of a set of one); 401 when unknown."""
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

    def _cached(self, kid: str) -> SigningKey | None:
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



def _parse_jwks(body: bytes) -> dict[str, SigningKey]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _JwksError("response is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _JwksError("not a key set: 'keys' must be a list of objects")
    keys: dict[str, SigningKey] = {}
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
