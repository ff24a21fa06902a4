"""Task events: the payload shape publishers send and the ``data:`` line clients get.

Publishers send ``{"event_type": "task.created", "user_id": "42", "task": {...}}``.
Clients receive ``{"type":"task_update","event":"task.created","task":{...}}``,
serialised once per event, compact, on a single line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import EventError

__all__ = ["EVENT_TYPES", "TaskEvent", "parse_task_event", "resync_data"]

EVENT_TYPES = frozenset({"task.created", "task.updated", "task.deleted", "task.completed"})
_MAX_USER_ID = 256


@dataclass(frozen=True, slots=True)
class TaskEvent:
    event_type: str
    user_id: str
    task: dict[str, Any]

    def data(self) -> bytes:
        """The client-facing JSON, one line (``json.dumps`` escapes every line break)."""
        body = {"type": "task_update", "event": self.event_type, "task": self.task}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse_task_event(payload: object) -> TaskEvent:
    """Validate a decoded payload; raise :class:`EventError` saying what is wrong."""
    if not isinstance(payload, dict):
        raise EventError(f"event is a JSON {type(payload).__name__}, not an object")
    event_type = payload.get("event_type")
    if event_type not in EVENT_TYPES:
        raise EventError(f"unknown event_type {event_type!r}")
    user_id = payload.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise EventError("missing user_id")
    if len(user_id) > _MAX_USER_ID or not user_id.isprintable():
        raise EventError("user_id is too long or has control characters")
    task = payload.get("task")
    if not isinstance(task, dict):
        raise EventError("task must be a JSON object")
    return TaskEvent(event_type=event_type, user_id=user_id, task=task)


def resync_data(reason: str) -> str:
    return json.dumps({"type": "resync", "reason": reason}, separators=(",", ":"))
