"""events: the client-facing line, written by orjson and, for what it refuses, the stdlib."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_service.errors import EventError
from sse_service.events import MAX_DEPTH, parse_task_event
from sse_service.jsondecode import loads

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _event(task_json: str) -> bytes:
    text = f'{{"event_type":"task.created","user_id":"7","task":{task_json}}}'
    return parse_task_event(loads(text.encode("utf-8", "surrogatepass"))).data()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _values, max_size=6))
def test_the_line_is_one_line_of_strict_json_with_the_task_unchanged(task: dict) -> None:
    data = _event(json.dumps(task))
    assert b"\n" not in data and b"\r" not in data
    parsed = json.loads(data, parse_constant=pytest.fail)
    assert parsed == {"type": "task_update", "event": "task.created", "task": task}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_number_strict_json_cannot_carry_is_refused_not_written_as_null(number: str) -> None:
    with pytest.raises(EventError, match="NaN or an infinite number"):
        _event(f'{{"score":{number}}}')


def test_integers_beyond_64_bits_are_written_exactly() -> None:
    big = 2**70 + 1
    assert json.loads(_event(f'{{"n":{big},"m":-{big}}}'))["task"] == {"n": big, "m": -big}


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(EventError, match="lone surrogate"):
        _event('{"title":"\\ud800"}')


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 300])
def test_nesting_past_the_limit_is_refused_at_any_depth(depth: int) -> None:
    # The task itself is at depth 2: a tree of ``depth - 2`` more levels reaches ``depth``.
    tree = "[" * (depth - 2) + "]" * (depth - 2)
    if depth <= MAX_DEPTH:
        assert _event(f'{{"t":{tree}}}').count(b"[") == depth - 2
    else:
        with pytest.raises(EventError, match="nested deeper"):
            _event(f'{{"t":{tree}}}')


def test_a_line_takes_no_more_memory_than_its_bytes() -> None:
    # Every history keeps its lines: orjson's result alone would keep the whole
    # 4 KiB buffer it was written in, ten times what a 300-byte line needs.
    event = parse_task_event(loads(b'{"event_type":"task.created","user_id":"7",'
                                   b'"task":{"id":1,"title":"' + b"t" * 280 + b'"}}'))
    tracemalloc.start()
    try:
        lines = [event.data() for _ in range(500)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lines[0]) < 400
    assert held / len(lines) < len(lines[0]) + 100
