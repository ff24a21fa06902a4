"""Running a coroutine at once, and in a task only if it has to wait.

A stream request under ``sse-service serve`` is opened by a coroutine (the
token may need a JWKS fetch, the history a Redis read).  With the memory
backend and shared-secret tokens it never waits, yet a task for it would cost
a task object, a scheduled step and a turn of the loop before the stream
opens.  :func:`run_eagerly` does what Python 3.12's eager tasks do: it runs the
coroutine in the caller until it first waits, and only then goes on in a
task, which takes each future the coroutine waits on as a task would
(:func:`_go_on`; cancelling the task reaches the coroutine where it waits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_eagerly"]

logger = logging.getLogger(__name__)


def run_eagerly(loop: asyncio.AbstractEventLoop,
                coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coroutine`` now, as far as it goes without waiting, and go on in a
    task only if it has to wait (what Python 3.12's eager tasks do): a stream
    that opens without waiting (memory backend, shared-secret tokens) costs no
    task and no extra turn of the loop.  It runs in the caller's context."""
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return None
    except Exception:
        logger.exception("serving a stream request failed")
        return None
    return loop.create_task(_go_on(coroutine, waiting))


async def _go_on(coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive ``coroutine`` on from where it yielded ``waiting``, as its task would."""
    while True:
        error: BaseException | None = None
        if waiting is None:  # a bare yield: one turn of the loop
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as cancelled:
                error = cancelled
        elif not asyncio.isfuture(waiting):
            error = RuntimeError(f"a stream's opening yielded {waiting!r}, not a future")
        else:
            waiting._asyncio_future_blocking = False  # taken, as a task takes it
            try:
                await waiting
            except asyncio.CancelledError as cancelled:
                # This task was cancelled, not what it waited on: pass that on.
                error = None if waiting.cancelled() else cancelled
            except BaseException:
                pass  # the coroutine reads the outcome from the future itself
        try:
            waiting = coroutine.send(None) if error is None else coroutine.throw(error)
        except StopIteration:
            return
