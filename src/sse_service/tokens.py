"""JWTs in compact form: parsing, HMAC signatures and the claim rules (pure, no I/O).

Every stream connect verifies a token, so this is on the connect path:
PyJWT's general machinery costs about 50 µs a token, this module about 8 µs
for an HMAC one.  Asymmetric signatures are still checked by PyJWT's
algorithm objects (:func:`verify_signature`); parsing and claims are ours for
every algorithm, so there is one set of rules:

* three base64url segments without padding; header and payload JSON objects;
  a header with ``crit`` (no extension is understood) or ``b64`` is refused;
  ``kid``, when present, is a string;
* the signature is checked before any claim;
* ``exp`` and ``sub`` are required (null counts as missing); ``exp``, ``nbf``
  and ``iat`` are JSON numbers (PyJWT would also take ``true`` or ``"123"``),
  of which whole seconds count; expired when ``exp <= now - leeway``,
  not yet valid when ``nbf`` or ``iat`` ``> now + leeway``;
* ``iss`` must equal the configured issuer when one is set; ``aud`` (a string
  or a list of strings) must contain the configured audience when one is set,
  and a token carrying ``aud`` is refused when none is (RFC 7519 section 4.1.3);
* ``sub`` and ``jti``, when present, are strings.

Failures raise :class:`~sse_service.errors.AuthError` with the reason a client sees.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import re
from typing import Any, NamedTuple

import jwt

from .errors import AuthError
from .jsondecode import loads

__all__ = ["HEADER_CACHE_SIZE", "Claims", "HeaderCache", "Parsed", "check_claims", "claims_of",
           "KeyedHmac", "keyed_hmac", "parse", "verify_hmac", "verify_signature"]

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


# Named tuples rather than frozen dataclasses: made once per connect, and a
# frozen dataclass sets each field through object.__setattr__.
class Parsed(NamedTuple):
    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


class Claims(NamedTuple):
    """What a verified token says: ``sub`` (still to be checked by the caller),
    ``exp`` as given, and ``iat`` in whole seconds (``None`` without one)."""

    subject: object
    expires: float
    issued_at: int | None


def _segment(text: str) -> bytes:
    if _SEGMENT.fullmatch(text) is None or len(text) % 4 == 1:
        raise AuthError("malformed token")
    # base64.urlsafe_b64decode, without its argument coercion: the pattern
    # has already checked every character is of the URL-safe alphabet.
    data = text.encode("ascii").translate(_URLSAFE) + b"=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        raise AuthError("malformed token") from None


def _object(data: bytes, reason: str) -> dict[str, Any]:
    try:
        value = loads(data)
    except (ValueError, RecursionError):
        raise AuthError(reason) from None
    if not isinstance(value, dict):
        raise AuthError(reason)
    return value


#: Distinct headers a :class:`HeaderCache` keeps: an issuer signs with a few
#: keys, so its tokens carry a few headers; forged ones only evict each other.
HEADER_CACHE_SIZE = 64


class HeaderCache:
    """Headers already decoded and checked, by their encoded segment: every
    token of one issuer and key starts with the same one."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Any]] = {}

    def header(self, segment: str) -> dict[str, Any]:
        header = self._known.get(segment)
        if header is None:
            header = _header(segment)
            if len(self._known) >= HEADER_CACHE_SIZE:
                self._known.clear()
            self._known[segment] = header
        return header


def _header(segment: str) -> dict[str, Any]:
    header = _object(_segment(segment), "malformed token")
    if "crit" in header or "b64" in header:
        raise AuthError("malformed token")
    if "kid" in header and not isinstance(header["kid"], str):
        raise AuthError("malformed token")
    return header


def parse(token: str, headers: HeaderCache | None = None) -> Parsed:
    """Split and decode a compact JWS; the header is checked, the payload is not.

    The header is shared with other tokens when it comes from ``headers``: read it,
    never change it."""
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        raise AuthError("malformed token")
    header = _header(parts[0]) if headers is None else headers.header(parts[0])
    return Parsed(header, _segment(parts[1]), f"{parts[0]}.{parts[1]}".encode(),
                  _segment(parts[2]))


# RFC 2104's pads, as translation tables: each key byte XOR 0x36, or 0x5c.
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class KeyedHmac:
    """HMAC (RFC 2104) of one hash and key with both padded keys hashed once, so a
    token's MAC costs two hash copies, not the key schedule: 40 % cheaper than
    copying a keyed :class:`hmac.HMAC`, whose wrapper is Python."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, algorithm: str, secret: bytes) -> None:
        new = _HASHES[algorithm]
        block = new().block_size
        key = (new(secret).digest() if len(secret) > block else secret).ljust(block, b"\0")
        self._inner = new(key.translate(_IPAD))
        self._outer = new(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def keyed_hmac(algorithm: str, secret: bytes) -> KeyedHmac:
    """The HMAC of ``algorithm`` with ``secret`` set, for :func:`verify_hmac`: the
    key schedule is done once, not once per token."""
    return KeyedHmac(algorithm, secret)


def verify_hmac(parsed: Parsed, algorithm: str, secret: bytes | KeyedHmac) -> None:
    """``secret`` is the key itself, or :func:`keyed_hmac` of it for ``algorithm``."""
    if isinstance(secret, bytes):
        expected = hmac.new(secret, parsed.signing_input, _HASHES[algorithm]).digest()
    else:
        expected = secret.digest(parsed.signing_input)
    if not hmac.compare_digest(expected, parsed.signature):
        raise AuthError("invalid signature")


def verify_signature(parsed: Parsed, algorithm: str, key: Any) -> None:
    """An asymmetric signature, checked by PyJWT's implementation of ``algorithm``."""
    try:
        valid = jwt.get_algorithm_by_name(algorithm).verify(
            parsed.signing_input, key, parsed.signature
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        valid = False
    if not valid:
        raise AuthError("invalid signature")


def _seconds(claims: dict[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError("invalid token")
    return int(value)


def check_claims(
    parsed: Parsed, now: float, leeway: float, audience: str | None, issuer: str | None
) -> tuple[object, float]:
    """``(sub, exp)`` of a token whose signature was verified; ``exp`` as given (a
    stream lives until then), though whole seconds decide whether it has passed."""
    claims = claims_of(parsed, now, leeway, audience, issuer)
    return claims.subject, claims.expires


def claims_of(
    parsed: Parsed, now: float, leeway: float, audience: str | None, issuer: str | None
) -> Claims:
    """:func:`check_claims`, with the issue time too (a sign-out compares it)."""
    claims = _object(parsed.payload, "invalid token")
    for name in ("exp", "sub"):
        if claims.get(name) is None:  # a null claim is a missing one
            raise AuthError(f"missing claim {name!r}")
    issued_at = _seconds(claims, "iat") if "iat" in claims else None
    if issued_at is not None and issued_at > now + leeway:
        raise AuthError("token not yet valid")
    if "nbf" in claims and _seconds(claims, "nbf") > now + leeway:
        raise AuthError("token not yet valid")
    if _seconds(claims, "exp") <= now - leeway:
        raise AuthError("token expired")
    if issuer is not None:
        if "iss" not in claims:
            raise AuthError("missing claim 'iss'")
        if claims["iss"] != issuer:
            raise AuthError("wrong issuer")
    _check_audience(claims, audience)
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise AuthError("invalid token")
    return Claims(claims["sub"], float(claims["exp"]), issued_at)


def _check_audience(claims: dict[str, Any], audience: str | None) -> None:
    given = claims.get("aud")
    if audience is None:
        if given:
            raise AuthError("wrong audience")
        return
    if not given:
        raise AuthError("missing claim 'aud'")
    given = [given] if isinstance(given, str) else given
    if not isinstance(given, list) or not all(isinstance(item, str) for item in given):
        raise AuthError("wrong audience")
    if audience not in given:
        raise AuthError("wrong audience")
