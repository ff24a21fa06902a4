"""Waiting with a deadline: the one poll loop the tests share.

A test waits for what it can observe (a log line, a count, a reply) rather
than for time to pass.  Every wait ends: after ``timeout`` seconds it fails
with ``message``, which may be a callable so that what it shows (a log, a
list) is read when the wait fails, not when it starts.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["aeventually", "eventually", "holds"]

T = TypeVar("T")
Message = str | Callable[[], str]


def _failure(message: Message, timeout: float) -> AssertionError:
    text = message() if callable(message) else message
    return AssertionError(f"timed out after {timeout:g} s: {text}")


def eventually(condition: Callable[[], T], timeout: float = 10, *, message: Message,
               interval: float = 0.02) -> T:
    """Call ``condition()`` until it returns something truthy, and return that.

    An exception from ``condition`` (an ``assert`` on an intermediate state,
    a process that died) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _failure(message, timeout)
        time.sleep(interval)


async def aeventually(condition: Callable[[], T | Awaitable[T]], timeout: float = 10, *,
                      message: Message, interval: float = 0.02) -> T:
    """:func:`eventually` for a test on an event loop: ``condition`` may be a
    coroutine function, and the loop keeps running between calls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            raise _failure(message, timeout)
        await asyncio.sleep(interval)


async def holds(check: Callable[[], bool], seconds: float, what: str) -> None:
    """The opposite wait: fail as soon as ``check()`` is false within ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert check(), f"no longer true: {what}"
        await asyncio.sleep(0.05)
    assert check(), f"no longer true: {what}"
