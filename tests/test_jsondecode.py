"""jsondecode.loads against json.loads: the same values, the same refusals."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_service.jsondecode import NonFinite, loads

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values, st.sampled_from(["", " ", "\n\t\r "]))
def test_every_json_text_reads_as_json_loads_reads_it(value: object, space: str) -> None:
    text = space + json.dumps(value, ensure_ascii=False) + space
    assert loads(text.encode()) == json.loads(text.encode())
    assert loads(text) == json.loads(text)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_any_bytes_are_read_or_refused_as_json_loads_does(data: bytes) -> None:
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError) as exc:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and 0 in data[:4]):
            return  # json.loads sniffs UTF-16/32 here; only UTF-8 is JSON between systems
        with pytest.raises(type(exc) if isinstance(exc, RecursionError) else ValueError):
            loads(data)
        return
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and 0 in data[:4]):
        return
    actual = loads(data)
    assert actual == expected or (isinstance(actual, float) and math.isnan(actual))


@pytest.mark.parametrize("text", [b"", b"   ", b"{", b'{"a":1} x', b"[1,]", b"\xff", b"{} {}"])
def test_what_is_not_one_json_text_is_a_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads(text)


def test_a_byte_order_mark_is_skipped_and_lone_surrogates_pass_as_json_loads_passes_them() -> None:
    assert loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1} == json.loads(b'\xef\xbb\xbf{"a": 1}')
    encoded = b'"\xed\xa0\x80"'  # UTF-8 bytes of a lone surrogate
    assert loads(encoded) == json.loads(encoded) == "\ud800"


def test_nesting_beyond_the_interpreter_limit_is_a_recursion_error() -> None:
    with pytest.raises(RecursionError):
        loads(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"-2e308"])
def test_numbers_strict_json_cannot_carry_are_marked_non_finite(text: bytes) -> None:
    value = loads(text)
    number = value if isinstance(value, float) else next(iter(
        value.values() if isinstance(value, dict) else value))
    assert isinstance(number, NonFinite) and not math.isfinite(number)
    assert json.dumps(number) == json.dumps(float(number))  # still the same float


def test_finite_floats_stay_plain_floats() -> None:
    assert type(loads(b"[1.5, 1e300, -0.0]")[1]) is float


@pytest.mark.parametrize("text", [
    b"12345678901234567890123", b"-12345678901234567890123", b" 98765432109876543210",
    b'{"a":123456789012345678901}', b'{"a": -123456789012345678901}',
    b"[1,\n 99999999999999999999]",
    b'{"n":18446744073709551616}', b'{"n":-9223372036854775809}', b'{"n":9223372036854775807}',
    b'{"s":"00-00000000000000000000000000000000-0000000000000000-00","n":1}',
    b'{"f":1.5e-400,"g":2.5e308,"h":-0.0,"i":-0,"j":1E5,"k":0.1}',
])
def test_integers_beyond_64_bits_and_edge_numbers_read_exactly(text: bytes) -> None:
    expected = json.loads(text)
    actual = loads(text)
    assert actual == expected and repr(actual) == repr(expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False), max_size=6))
def test_numbers_keep_their_type_and_value(numbers: list[object]) -> None:
    text = json.dumps({"n": numbers}).encode()
    assert repr(loads(text)) == repr(json.loads(text))
