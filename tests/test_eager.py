"""eager.run_eagerly: a stream's opening runs at once, and in a task only if it waits."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sse_service.eager import run_eagerly

pytestmark = pytest.mark.timeout(10)


async def test_a_coroutine_that_never_waits_runs_to_its_end_with_no_task() -> None:
    seen: list[str] = []

    async def opening() -> None:
        seen.append("opened")

    assert run_eagerly(asyncio.get_running_loop(), opening()) is None
    assert seen == ["opened"]


async def test_one_that_waits_goes_on_in_a_task_with_each_outcome_it_waited_for() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen: list[object] = []

    async def opening() -> None:
        seen.append("started")
        seen.append(await first)
        await asyncio.sleep(0)  # a bare yield
        try:
            await second
        except KeyError as exc:
            seen.append(exc)

    task = run_eagerly(loop, opening())
    assert task is not None and seen == ["started"]
    first.set_result("value")
    await asyncio.sleep(0)
    second.set_exception(KeyError("k"))
    await asyncio.wait_for(task, 5)
    assert seen[:2] == ["started", "value"] and isinstance(seen[2], KeyError)


async def test_cancelling_its_task_cancels_the_coroutine_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    never = loop.create_future()
    seen: list[str] = []

    async def opening() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = run_eagerly(loop, opening())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert seen == ["cancelled"]


async def test_cancelling_it_while_it_waits_on_a_shielded_task_still_reaches_it() -> None:
    loop = asyncio.get_running_loop()
    inner = loop.create_future()
    seen: list[str] = []

    async def opening() -> None:
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = run_eagerly(loop, opening())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert seen == ["cancelled"] and not inner.cancelled()


async def test_an_error_before_it_waits_is_logged_not_raised(caplog) -> None:
    async def opening() -> None:
        raise RuntimeError("broken")

    with caplog.at_level(logging.ERROR):
        assert run_eagerly(asyncio.get_running_loop(), opening()) is None
    assert "serving a stream request failed" in caplog.text and "broken" in caplog.text


async def test_a_yield_that_is_no_future_is_an_error_in_the_coroutine() -> None:
    class Odd:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield 42

    seen: list[BaseException] = []

    async def opening() -> None:
        try:
            await Odd()
        except RuntimeError as exc:
            seen.append(exc)

    task = run_eagerly(asyncio.get_running_loop(), opening())
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert len(seen) == 1 and "not a future" in str(seen[0])
