"""tokens.py against PyJWT: the same tokens are accepted and refused for the same reasons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_service import tokens
from sse_service.errors import AuthError

SECRET = "s" * 32
NOW = time.time()
LEEWAY = 10.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pyjwt(token: str, audience: str | None, issuer: str | None) -> str:
    """PyJWT's verdict, in our reasons."""
    try:
        jwt.decode(token, SECRET, algorithms=["HS256"], audience=audience, issuer=issuer,
                   leeway=LEEWAY, options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        return "token expired"
    except jwt.ImmatureSignatureError:
        return "token not yet valid"
    except jwt.InvalidAudienceError:
        return "wrong audience"
    except jwt.InvalidIssuerError:
        return "wrong issuer"
    except jwt.MissingRequiredClaimError as exc:
        return f"missing claim {exc.claim!r}"
    except jwt.InvalidSignatureError:
        return "invalid signature"
    except jwt.PyJWTError:
        return "invalid token"
    return "ok"


_HEADERS = tokens.HeaderCache()
_KEYED = tokens.keyed_hmac("HS256", SECRET.encode())


def _verdict(token: str, audience: str | None, issuer: str | None, cached: bool) -> str:
    try:
        parsed = tokens.parse(token, _HEADERS if cached else None)
        tokens.verify_hmac(parsed, "HS256", _KEYED if cached else SECRET.encode())
        tokens.check_claims(parsed, time.time(), LEEWAY, audience, issuer)
    except AuthError as exc:
        return exc.reason
    return "ok"


def _ours(token: str, audience: str | None, issuer: str | None) -> str:
    """Our verdict, which must not depend on the header cache or the keyed HMAC."""
    plain = _verdict(token, audience, issuer, cached=False)
    assert _verdict(token, audience, issuer, cached=True) == plain
    assert _verdict(token, audience, issuer, cached=True) == plain  # now from the cache
    return plain


times = st.one_of(
    st.floats(min_value=NOW - 100, max_value=NOW + 100), st.integers(0, 2**40),
    st.sampled_from([NOW - 11, NOW - 9, NOW + 9, NOW + 11]), st.none(),
)
claim_sets = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.text(max_size=8), st.integers()),
        "exp": times, "nbf": times, "iat": times,
        "aud": st.one_of(st.sampled_from(["api", "other", ""]),
                         st.lists(st.sampled_from(["api", "other"]), max_size=2),
                         st.integers()),
        "iss": st.one_of(st.sampled_from(["auth", "evil"]), st.integers()),
        "jti": st.one_of(st.text(max_size=4), st.integers()),
    },
)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(claims=claim_sets, audience=st.sampled_from([None, "api"]),
       issuer=st.sampled_from([None, "auth"]))
def test_claims_are_judged_as_pyjwt_judges_them(claims, audience, issuer):
    token = _forged({"alg": "HS256", "typ": "JWT"}, claims)
    assert _ours(token, audience, issuer) == _pyjwt(token, audience, issuer)


def test_a_good_token_gives_subject_and_expiry():
    token = jwt.encode({"sub": "42", "exp": int(NOW) + 60}, SECRET, algorithm="HS256")
    parsed = tokens.parse(token)
    tokens.verify_hmac(parsed, "HS256", SECRET.encode())
    assert tokens.check_claims(parsed, NOW, 0, None, None) == ("42", float(int(NOW) + 60))


def _forged(header: dict[str, object], claims: dict[str, object]) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c.d", "é.b.c", "a=.b.c", "a+b.c.d", "a b.c.d",
    _b64(b"[1]") + "." + _b64(b"{}") + ".",
    _b64(b'{"alg": "HS256"') + "." + _b64(b"{}") + ".",
    _forged({"alg": "HS256", "crit": ["exp"]}, {"sub": "1", "exp": NOW + 60}),
    _forged({"alg": "HS256", "b64": False}, {"sub": "1", "exp": NOW + 60}),
    _forged({"alg": "HS256", "kid": 5}, {"sub": "1", "exp": NOW + 60}),
    _b64(b"[" * 5000) + "." + _b64(b"{}") + ".",
])
def test_malformed_tokens_are_refused(token):
    with pytest.raises(AuthError, match="malformed token"):
        tokens.parse(token)


def test_a_changed_payload_breaks_the_signature():
    head, _, sig = jwt.encode({"sub": "1", "exp": NOW + 60}, SECRET).split(".")
    body = _b64(json.dumps({"sub": "admin", "exp": NOW + 60}).encode())
    parsed = tokens.parse(f"{head}.{body}.{sig}")
    with pytest.raises(AuthError, match="invalid signature"):
        tokens.verify_hmac(parsed, "HS256", SECRET.encode())


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_non_finite_times_are_invalid(value):
    token = _forged({"alg": "HS256"}, {"sub": "1"})
    head, _, _ = token.split(".")
    raw = b'{"sub":"1","exp":%s}' % value.encode()
    body = _b64(raw)
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    parsed = tokens.parse(f"{head}.{body}.{_b64(sig)}")
    tokens.verify_hmac(parsed, "HS256", SECRET.encode())
    with pytest.raises(AuthError, match="invalid token"):
        tokens.check_claims(parsed, NOW, LEEWAY, None, None)


@pytest.mark.parametrize("value", [True, False, "123", "soon"])
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_times_must_be_json_numbers(name, value):
    # Stricter than PyJWT, which reads True as 1 and "123" as 123: RFC 7519's
    # NumericDate is a JSON number.
    claims = {"sub": "1", "exp": NOW + 60, name: value}
    parsed = tokens.parse(_forged({"alg": "HS256"}, claims))
    with pytest.raises(AuthError, match="invalid token"):
        tokens.check_claims(parsed, NOW, LEEWAY, None, None)


def test_the_header_cache_is_bounded_and_never_keeps_a_refused_header() -> None:
    cache = tokens.HeaderCache()
    body, sig = _b64(b'{"sub":"1","exp":9999999999}'), _b64(b"x" * 32)
    head = _b64(b'{"alg":"HS256"}')
    first = tokens.parse(f"{head}.{body}.{sig}", cache).header
    again = tokens.parse(f"{head}.{body}.{sig}", cache).header
    assert again is first
    for i in range(3 * tokens.HEADER_CACHE_SIZE):
        head = _b64(json.dumps({"alg": "HS256", "kid": f"k{i}"}).encode())
        assert tokens.parse(f"{head}.{body}.{sig}", cache).header["kid"] == f"k{i}"
        assert len(cache._known) <= tokens.HEADER_CACHE_SIZE
    refused = _b64(b'{"alg":"HS256","crit":["x"]}')
    for _ in range(2):
        with pytest.raises(AuthError, match="malformed token"):
            tokens.parse(f"{refused}.{body}.{sig}", cache)
    assert refused not in cache._known


@settings(max_examples=200, deadline=None)
@given(algorithm=st.sampled_from(["HS256", "HS384", "HS512"]),
       secret=st.one_of(st.binary(max_size=200), st.sampled_from([b"k" * 64, b"k" * 128])),
       message=st.binary(max_size=300))
def test_the_keyed_hmac_is_the_stdlib_hmac(algorithm: str, secret: bytes, message: bytes) -> None:
    # Keys shorter than, as long as and longer than each hash's block.
    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[algorithm]
    keyed = tokens.keyed_hmac(algorithm, secret)
    assert keyed.digest(message) == hmac.new(secret, message, digest).digest()
    assert keyed.digest(message) == hmac.new(secret, message, digest).digest()  # reusable
