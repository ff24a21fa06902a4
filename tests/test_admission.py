"""Admission of new streams at SSE_MAX_CONNECT_RATE: the token bucket, and a storm of connects."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_service.admission import LOG_INTERVAL, REFUSAL, Admission, TokenBucket
from sse_service.broker_memory import MemoryBroker
from sse_service.config import Settings
from sse_service.errors import CapacityError, UserLimitError
from sse_service.hub import Hub
from support import aeventually

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_admits_one_seconds_worth_at_once_then_refuses():
    clock = Clock()
    bucket = TokenBucket(10, clock=clock)
    assert [bucket.admit() for _ in range(12)] == [True] * 10 + [False] * 2


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst():
    clock = Clock()
    bucket = TokenBucket(8, clock=clock)
    while bucket.admit():
        pass
    clock.now += 1 / 16  # half a token
    assert not bucket.admit()
    clock.now += 1 / 16
    assert bucket.admit() and not bucket.admit()
    # A long quiet spell fills the bucket to the burst, not to rate × idle time.
    clock.now += 3600
    assert sum(bucket.admit() for _ in range(100)) == 8


def test_a_rate_below_one_per_second_still_admits_one_at_a_time():
    clock = Clock()
    bucket = TokenBucket(0.5, clock=clock)
    assert bucket.admit() and not bucket.admit()
    clock.now += 1.75
    assert not bucket.admit()
    clock.now += 0.25
    assert bucket.admit()


def test_constant_demand_gets_the_burst_then_exactly_the_rate():
    clock = Clock()
    bucket = TokenBucket(20, clock=clock)
    admitted = 0
    for _ in range(10 * 64):  # ten seconds in steps of 1/64 s
        admitted += sum(bucket.admit() for _ in range(5))
        clock.now += 1 / 64
    admitted += sum(bucket.admit() for _ in range(5))
    assert admitted == 20 + 20 * 10


# Times are multiples of 1/1024 s and rates whole numbers, so the bucket's
# arithmetic is exact and the bound can be checked without a tolerance.
@given(
    rate=st.integers(1, 50),
    steps=st.lists(st.tuples(st.integers(0, 512), st.integers(0, 30)), max_size=60),
)
def test_no_window_ever_admits_more_than_rate_times_length_plus_burst(rate, steps):
    clock = Clock()
    bucket = TokenBucket(rate, clock=clock)
    times: list[float] = []
    for ticks, attempts in steps:
        clock.now += ticks / 1024
        times += [clock.now] * sum(bucket.admit() for _ in range(attempts))
    # The tightest windows start and end on an admission.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= rate * (times[j] - start) + bucket.burst


def test_a_refusal_is_a_503_with_a_jittered_retry_after():
    clock = Clock()
    admission = Admission(2, clock=clock)
    admission.check()
    admission.check()
    waits = []
    for _ in range(40):
        with pytest.raises(CapacityError) as refused:
            admission.check()
        assert refused.value.status_code == 503 and refused.value.reason == REFUSAL
        assert refused.value.headers == [(b"retry-after", str(refused.value.retry_after).encode())]
        waits.append(refused.value.retry_after)
    assert all(isinstance(w, int) and 1 <= w <= 5 for w in waits)
    assert len(set(waits)) > 1, waits
    assert admission.refused == 40


def test_a_storm_of_refusals_logs_one_line_per_interval(caplog):
    clock = Clock()
    admission = Admission(1, clock=clock)
    admission.check()
    caplog.set_level(logging.INFO, logger="sse_service.admission")
    for _ in range(500):
        with pytest.raises(CapacityError):
            admission.check()
    assert len(caplog.records) == 1
    assert "1 refused" in caplog.records[0].getMessage()
    clock.now += LOG_INTERVAL / 2
    admission.check()  # a token came back meanwhile
    for _ in range(300):
        with pytest.raises(CapacityError):
            admission.check()
    assert len(caplog.records) == 1
    clock.now += LOG_INTERVAL / 2
    admission.check()
    with pytest.raises(CapacityError):
        admission.check()
    assert len(caplog.records) == 2
    assert caplog.records[1].levelno == logging.WARNING
    assert "800 refused" in caplog.records[1].getMessage()


async def test_the_hub_refuses_before_it_allocates_anything():
    settings = Settings(max_connect_rate=2, max_connections_per_user=1)
    hub = Hub(MemoryBroker(settings.history_size, settings.history_ttl_seconds), settings)
    first = await hub.open("u1", None, None, None)
    # A stream refused for its user's limit spends no token ...
    with pytest.raises(UserLimitError):
        await hub.open("u1", None, None, None)
    second = await hub.open("u2", None, None, None)
    # ... and one refused for the rate holds no slot.
    with pytest.raises(CapacityError) as refused:
        await hub.open("u3", None, None, None)
    assert refused.value.reason == REFUSAL and 1 <= refused.value.retry_after <= 5
    assert (hub.count, hub.sockets, hub.admission.refused) == (2, 2, 1)
    for conn in (first, second):
        hub.close(conn)
    await hub.stop()


async def _connect(client: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    request = client.build_request("GET", f"{url}/events",
                                   headers={"authorization": f"Bearer {token}"})
    response = await client.send(request, stream=True)
    if response.status_code != 200:
        await response.aread()
    return response


@pytest.mark.usefixtures("stream_path")
async def test_a_connect_storm_is_admitted_at_the_rate_and_the_rest_told_when_to_return(
    start_service,
):
    rate = 5
    service = start_service(max_connect_rate=rate)
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as client:
        started = time.monotonic()
        replies = await asyncio.gather(*(
            _connect(client, service.url, service.token(f"storm{i}")) for i in range(20)))
        elapsed = time.monotonic() - started
        try:
            admitted = [r for r in replies if r.status_code == 200]
            refused = [r for r in replies if r.status_code != 200]
            # The burst, plus what the bucket refilled while the storm arrived.
            assert rate <= len(admitted) <= rate + rate * elapsed, (len(admitted), elapsed)
            assert refused and all(r.status_code == 503 for r in refused)
            waits = [int(r.headers["retry-after"]) for r in refused]
            assert all(1 <= w <= 5 for w in waits), waits
            assert len(set(waits)) > 1, waits
            assert all(r.json() == {"detail": REFUSAL} for r in refused)
            # One log line for the whole storm, not one per refusal.
            service.wait_for_log("SSE_MAX_CONNECT_RATE")
            assert service.logs().count("SSE_MAX_CONNECT_RATE") == 1, service.logs()
            # Tokens come back: a new stream is admitted again within a few seconds.
            async def admitted_again() -> httpx.Response | None:
                retry = await _connect(client, service.url, service.token("later"))
                replies.append(retry)
                assert retry.status_code in (200, 503), retry.status_code
                return retry if retry.status_code == 200 else None

            retry = await aeventually(admitted_again, 5, message="no stream admitted again",
                                      interval=0.05)
            assert (await anext(retry.aiter_text())).startswith("retry: ")
        finally:
            for reply in replies:
                await reply.aclose()
