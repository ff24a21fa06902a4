"""Task events: the payload shape publishers send and the ``data:`` line clients get.

Publishers send ``{"event_type": "task.created", "user_id": "42", "task": {...}}``.
Clients receive ``{"type":"task_update","event":"task.created","task":{...}}``,
serialised once per event, compact, on a single line, and strict RFC 8259:
browsers' ``JSON.parse`` throws on ``NaN`` or ``Infinity`` and on text that is
not valid Unicode, so an event whose task holds either is refused here, as
is a task nested deeper than :data:`MAX_DEPTH`.

A sign-out travels on the same topic, ``{"event_type": "session.revoked",
"user_id": "42", "not_before": <unix seconds>}``: it is no task event and
never reaches the history (:func:`parse_revocation`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple, TypeGuard

import orjson

from .errors import EventError

__all__ = ["EVENT_TYPES", "MAX_DEPTH", "MAX_NOT_BEFORE_AHEAD", "REVOKED", "Revocation",
           "TaskEvent", "is_revocation", "parse_revocation", "parse_task_event", "shown"]

EVENT_TYPES = frozenset({"task.created", "task.updated", "task.deleted", "task.completed"})
#: The event type of a sign-out everywhere.
REVOKED = "session.revoked"
#: How far ahead of now a sign-out's ``not_before`` may lie (seconds): a day.
#: Further ahead is a unit mistake (milliseconds) that would lock the user out.
MAX_NOT_BEFORE_AHEAD = 86_400
_MAX_USER_ID = 256
#: How much of an untrusted value a reason quotes.
_QUOTED_CHARS = 48

#: Deepest nesting of the client-facing line (the task's own fields are at
#: depth 2).  Deeper is refused by rule, the same wherever the check runs,
#: not wherever a parser's recursion limit happens to fall, and shallow enough
#: for client parsers that limit depth.
MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")

# The encoder of anything orjson will not write; it writes the same text.
_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
).encode


class TaskEvent(NamedTuple):
    """A task event read from JSON text by :mod:`.jsondecode`, whose
    :class:`~.jsondecode.NonFinite` floats :meth:`data` relies on to refuse
    ``NaN`` and ``Infinity`` (:func:`parse_task_event` is how one is made)."""

    event_type: str
    user_id: str
    task: dict[str, Any]

    def data(self) -> bytes:
        """The client-facing JSON, one line (the encoders escape every line break).

        Raises :class:`EventError` when the task cannot be sent as strict JSON.
        """
        body = {"type": "task_update", "event": self.event_type, "task": self.task}
        try:
            # Ten times cheaper than the stdlib encoder.  It refuses (TypeError)
            # integers beyond 64 bits, lone surrogates, nesting past 254 and the
            # NonFinite floats the decoder reads NaN and Infinity as; the stdlib
            # encoder writes the integers and says what is wrong with the rest.
            # The copy: orjson's result keeps its 4 KiB write buffer, which a
            # history of these would hold ten times over.
            data = bytes(memoryview(orjson.dumps(body)))
        except TypeError:
            data = _strict(body)
        if _deeper_than(data, MAX_DEPTH):
            raise EventError(f"task is nested deeper than {MAX_DEPTH} levels")
        return data


def _strict(body: dict[str, Any]) -> bytes:
    try:
        text = _encode(body)
    except ValueError:
        # 1e400 decodes to infinity, so this covers out-of-range numbers too.
        raise EventError("task holds NaN or an infinite number, not valid JSON") from None
    except RecursionError:
        raise EventError(f"task is nested deeper than {MAX_DEPTH} levels") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise EventError("task holds a lone surrogate, not valid Unicode") from None


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON ``data`` nests deeper than ``limit``."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # too few brackets to be that deep: the usual, cheap answer
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", data.decode()))
    # Each pass removes exactly one level: the pairs that are innermost now.
    for _ in range(limit):
        brackets = _INNERMOST.sub("", brackets)
        if not brackets:
            return False
    return True


def shown(value: object) -> str:
    """A short rendering of an untrusted value for a reason: strings are quoted
    and cut, containers named, never rendered (they may be huge or deep)."""
    if isinstance(value, str):
        cut = value[:_QUOTED_CHARS]
        return f"'{cut}'" if len(cut) == len(value) else f"'{cut}...' ({len(value)} chars)"
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        text = repr(value)
        return text if len(text) <= _QUOTED_CHARS else f"(a number of {len(text)} digits)"
    if isinstance(value, dict):
        return "a JSON object"
    return "a JSON array" if isinstance(value, list) else type(value).__name__


class Revocation(NamedTuple):
    user_id: str
    #: Unix seconds: tokens issued before it are refused.
    not_before: float


def is_revocation(payload: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(payload, dict) and payload.get("event_type") == REVOKED


def parse_revocation(payload: dict[str, Any], now: float) -> Revocation:
    """Validate a sign-out (``now`` in unix seconds); raise :class:`EventError`."""
    user_id = _user_id(payload)
    not_before = payload.get("not_before")
    if (isinstance(not_before, bool) or not isinstance(not_before, int | float)
            or (isinstance(not_before, float) and not math.isfinite(not_before))
            or not_before < 0):
        raise EventError(f"not_before must be a number of unix seconds, "
                         f"not {shown(not_before)}")
    # Compared before float(): a huge integer would overflow it.
    if not_before > now + MAX_NOT_BEFORE_AHEAD:
        raise EventError(f"not_before {shown(not_before)} is more than a day ahead")
    return Revocation(user_id, float(not_before))


def _user_id(payload: dict[str, Any]) -> str:
    user_id = payload.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise EventError("missing user_id")
    # isprintable() is False for control characters and lone surrogates alike.
    if len(user_id) > _MAX_USER_ID or not user_id.isprintable():
        raise EventError("user_id is too long or has control characters")
    return user_id


def parse_task_event(payload: object) -> TaskEvent:
    """Validate a decoded payload; raise :class:`EventError` saying what is wrong."""
    if not isinstance(payload, dict):
        raise EventError(f"event is a JSON {type(payload).__name__}, not an object")
    event_type = payload.get("event_type")
    # A list or object is unhashable: test the type before the set.
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise EventError(f"unknown event_type {shown(event_type)}")
    user_id = _user_id(payload)
    task = payload.get("task")
    if not isinstance(task, dict):
        raise EventError("task must be a JSON object")
    # tuple.__new__: a NamedTuple's own __new__ is a Python function, a frame per call.
    return tuple.__new__(TaskEvent, (event_type, user_id, task))

