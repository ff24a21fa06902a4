"""The one timer behind every request head's deadline."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sse_service.head_deadlines import STEPS, HeadDeadlines

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 0.2


class Watcher:
    def __init__(self, name: str, expired: list[tuple[str, float]],
                 done: asyncio.Event | None = None) -> None:
        self.name = name
        self._expired = expired
        self._done = done

    def head_timed_out(self) -> None:
        self._expired.append((self.name, asyncio.get_running_loop().time()))
        if self._done is not None:
            self._done.set()


async def test_heads_expire_in_arming_order_and_within_a_step_of_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[tuple[str, float]] = []
    done = asyncio.Event()
    armed_at = loop.time()
    deadlines.arm(Watcher("first", expired), loop)
    deadlines.arm(Watcher("second", expired, done), loop)
    await asyncio.wait_for(done.wait(), 5)
    assert [name for name, _ in expired] == ["first", "second"]
    for _, at in expired:
        # Loop timers may fire a clock tick early; the bound is one step late.
        assert TIMEOUT - 0.01 <= at - armed_at <= TIMEOUT * (1 + 1 / STEPS) + 0.5
    assert len(deadlines) == 0


async def test_a_disarmed_head_never_expires() -> None:
    loop = asyncio.get_running_loop()
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[tuple[str, float]] = []
    done = asyncio.Event()
    quiet = Watcher("disarmed", expired)
    deadlines.arm(quiet, loop)
    deadlines.arm(Watcher("armed", expired, done), loop)
    deadlines.disarm(quiet)
    deadlines.disarm(quiet)  # twice: nothing to do
    await asyncio.wait_for(done.wait(), 5)
    assert [name for name, _ in expired] == ["armed"]


async def test_rearming_restarts_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[tuple[str, float]] = []
    done = asyncio.Event()
    rearmed = Watcher("rearmed", expired, done)
    deadlines.arm(rearmed, loop)
    deadlines.arm(Watcher("other", expired), loop)
    rearmed_at = loop.time()
    deadlines.arm(rearmed, loop)
    await asyncio.wait_for(done.wait(), 5)
    # Re-armed behind the other head, once: had it kept its first place, it would
    # have gone first, its later deadline holding back the other's.
    assert [name for name, _ in expired] == ["other", "rearmed"]
    assert expired[1][1] - rearmed_at >= TIMEOUT - 0.01
    assert len(deadlines) == 0


async def test_a_head_may_arm_itself_again_when_it_expires() -> None:
    loop = asyncio.get_running_loop()
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[str] = []
    done = asyncio.Event()

    class Again:
        def head_timed_out(self) -> None:
            expired.append("again")
            if len(expired) < 2:
                deadlines.arm(self, loop)
            else:
                done.set()

    deadlines.arm(Again(), loop)
    await asyncio.wait_for(done.wait(), 5)
    assert expired == ["again", "again"]


async def test_a_failing_head_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[tuple[str, float]] = []
    done = asyncio.Event()

    class Broken:
        def head_timed_out(self) -> None:
            raise RuntimeError("broken")

    class ArmsAnother:
        def head_timed_out(self) -> None:
            expired.append(("after", loop.time()))
            # Armed from the failing sweep: only a later sweep can expire it.
            deadlines.arm(Watcher("later", expired, done), loop)

    with caplog.at_level(logging.ERROR, logger="sse_service.head_deadlines"):
        deadlines.arm(Broken(), loop)
        deadlines.arm(ArmsAnother(), loop)
        await asyncio.wait_for(done.wait(), 5)
    assert [name for name, _ in expired] == ["after", "later"]
    assert "expiring a request head failed" in caplog.text


def test_a_new_loop_gets_its_own_timer() -> None:
    """A server's protocol class outlives a loop (tests, a restarted server)."""
    deadlines = HeadDeadlines(TIMEOUT)
    expired: list[tuple[str, float]] = []

    async def armed_then_gone() -> None:
        deadlines.arm(Watcher("abandoned", expired), asyncio.get_running_loop())

    async def on_a_new_loop() -> None:
        done = asyncio.Event()
        deadlines.arm(Watcher("new", expired, done), asyncio.get_running_loop())
        await asyncio.wait_for(done.wait(), 5)

    asyncio.run(armed_then_gone())
    asyncio.run(on_a_new_loop())
    assert [name for name, _ in expired] == ["abandoned", "new"]
