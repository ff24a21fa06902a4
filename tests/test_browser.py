"""End to end in real headless Chromium: the demo page and sse-client.js against the service.

Every test reads what the page shows.  Waits are Playwright waits or polls
with a deadline; the publish that comes last in a test doubles as a barrier
(one stream is ordered, so a duplicate would have arrived before it).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import pytest
from playwright.async_api import Browser, Page, Request, Route, async_playwright, expect

from support import SECRET, Service, aeventually, holds, make_token
from support.browser import (
    CHROMIUM_ARGS,
    Frontend,
    count_requests,
    open_streams,
    publish,
    require_chromium,
)
from support.proxy import CuttableProxy
from support.redis import RedisServer

# Without Chromium the module skips (`make system-deps` installs it); under CI it fails.
CHROMIUM = require_chromium()

pytestmark = pytest.mark.timeout(90)

WAIT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        chromium = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    # A short retry keeps the browser's own reconnects quick.
    return start_service(retry_ms=400, demo_page=True)


async def open_demo(browser: Browser, base: str, query: str) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{base}/?{query}")
    return page


async def expect_status(page: Page, status: str) -> None:
    await expect(page.get_by_test_id("status")).to_have_attribute(
        "data-status", status, timeout=WAIT_MS)


async def shown_tasks(page: Page) -> list[int]:
    ids: list[str] = await page.eval_on_selector_all(
        "#events li", "rows => rows.map(row => row.dataset.taskId)")
    return [int(i) for i in ids]


async def wait_tasks(page: Page, expected: list[int]) -> None:
    """Wait until the page lists ``len(expected)`` events, then compare exactly."""
    await expect(page.locator("#events li")).to_have_count(len(expected), timeout=WAIT_MS)
    assert await shown_tasks(page) == expected


async def test_page_shows_published_events_in_order(browser: Browser, service: Service) -> None:
    page = await open_demo(browser, service.url, "user=42")
    await expect_status(page, "open")
    kinds = ["task.created", "task.updated", "task.completed", "task.deleted"]
    for task_id, kind in enumerate(kinds, start=1):
        await publish(service.url, "42", task_id, kind)
    await wait_tasks(page, [1, 2, 3, 4])
    rows = page.locator("#events li")
    assert [await rows.nth(i).get_attribute("data-event") for i in range(4)] == kinds
    last_id = await rows.nth(3).get_attribute("data-id")
    await expect(page.locator("#last-id")).to_have_text(last_id or "?")
    await expect(page.locator("#who")).to_have_text("42")
    await expect(page.locator("#resync")).to_be_hidden()
    await expect_status(page, "open")


async def test_each_tab_gets_exactly_its_users_events(browser: Browser, service: Service) -> None:
    tabs: dict[str, list[Page]] = {}
    for user in ("alice", "bob"):
        context = await browser.new_context()
        tabs[user] = [await context.new_page() for _ in range(2)]
        for page in tabs[user]:
            await page.goto(f"{service.url}/?user={user}")
    for page in tabs["alice"] + tabs["bob"]:
        await expect_status(page, "open")
    assert await open_streams(service.url) == 4
    plan = [("alice", 1), ("bob", 101), ("alice", 2), ("bob", 102), ("alice", 3), ("bob", 103)]
    for user, task_id in plan:
        await publish(service.url, user, task_id)
    for page in tabs["alice"]:
        await wait_tasks(page, [1, 2, 3])
        await expect(page.locator("#who")).to_have_text("alice")
    for page in tabs["bob"]:
        await wait_tasks(page, [101, 102, 103])
        await expect(page.locator("#who")).to_have_text("bob")


async def test_browser_resumes_with_last_event_id_after_a_cut(
    browser: Browser, service: Service
) -> None:
    proxy = await CuttableProxy(service.port).start()
    try:
        page = await open_demo(browser, proxy.url, "user=42")
        await expect_status(page, "open")
        for task_id in (1, 2):
            await publish(service.url, "42", task_id)
        await wait_tasks(page, [1, 2])
        last_id = (await page.locator("#last-id").text_content() or "").strip()
        before = len(proxy.requests)
        # An ingress timeout: the connection is gone, the browser retries, and
        # the retry waits at the proxy while events are published.
        proxy.cut()
        await expect_status(page, "reconnecting")
        retry = await proxy.wait_for_request("GET /events", start=before)
        assert f"last-event-id: {last_id}" in retry.lower(), retry
        assert "lasteventid=" not in retry.lower(), "the browser's own retry, not a new stream"
        for task_id in (3, 4):
            await publish(service.url, "42", task_id)
        proxy.release()
        await expect_status(page, "open")
        await publish(service.url, "42", 5)
        await wait_tasks(page, [1, 2, 3, 4, 5])
        await expect(page.locator("#resync")).to_be_hidden()
    finally:
        await proxy.close()


async def test_restart_of_a_memory_service_shows_resync_then_new_events(
    browser: Browser, start_service: Callable[..., Service]
) -> None:
    service = start_service(retry_ms=400, demo_page=True)
    page = await open_demo(browser, service.url, "user=42")
    await expect_status(page, "open")
    await publish(service.url, "42", 1)
    await wait_tasks(page, [1])
    service.stop(signal.SIGKILL)
    await expect_status(page, "reconnecting")
    restarted = await asyncio.to_thread(start_service, port=service.port, retry_ms=400,
                                        demo_page=True)
    await expect(page.locator("#resync")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#resync-reason")).to_have_text("unknown_epoch")
    await expect_status(page, "open")
    await publish(restarted.url, "42", 2)
    await wait_tasks(page, [1, 2])


async def test_restart_with_redis_loses_nothing(
    browser: Browser, start_service: Callable[..., Service],
    redis_server: Callable[..., RedisServer],
) -> None:
    redis = redis_server()
    settings = {"retry_ms": 400, "backend": "redis", "redis_url": redis.url, "demo_page": True}
    service = start_service(**settings)
    proxy = await CuttableProxy(service.port).start()
    try:
        page = await open_demo(browser, proxy.url, "user=42")
        await expect_status(page, "open")
        await publish(service.url, "42", 1)
        await wait_tasks(page, [1])
        # Kill the service and park the browser's retry until the service is
        # back and has taken more events: they must come from Redis history.
        proxy.cut()
        service.stop(signal.SIGKILL)
        await expect_status(page, "reconnecting")
        restarted = await asyncio.to_thread(start_service, port=service.port, **settings)
        for task_id in (2, 3):
            await publish(restarted.url, "42", task_id)
        proxy.release()
        await expect_status(page, "open")
        await publish(restarted.url, "42", 4)
        await wait_tasks(page, [1, 2, 3, 4])
        await expect(page.locator("#resync")).to_be_hidden()
    finally:
        await proxy.close()


async def test_expired_token_is_replaced_without_losing_events(
    browser: Browser, start_service: Callable[..., Service]
) -> None:
    service = start_service(retry_ms=400, jwt_leeway_seconds=0, demo_page=True)
    page = await (await browser.new_context()).new_page()
    mints: list[Request] = []
    refresh = asyncio.Event()

    async def mint(route: Route) -> None:
        mints.append(route.request)
        if len(mints) > 1:
            # Hold the refresh so events pile up while the page has no stream,
            # then hand out a long-lived token so the test ends in one cycle.
            await refresh.wait()
            body = json.loads(route.request.post_data or "{}")
            await route.continue_(post_data=json.dumps({**body, "ttl": 3600}))
            return
        await route.continue_()

    await page.route("**/demo/token", mint)
    await page.goto(f"{service.url}/?user=42&ttl=4")
    await expect_status(page, "open")
    await publish(service.url, "42", 1)
    await wait_tasks(page, [1])
    # The token runs out: the server's close event says so, and the client
    # asks for a new token at once instead of letting the browser retry with
    # the old one into a 401.
    await aeventually(lambda: len(mints) >= 2, 15, message="a token refresh")
    await expect_status(page, "reconnecting")
    await expect(page.get_by_test_id("status")).to_have_attribute("title", "token_expired")
    for task_id in (2, 3):
        await publish(service.url, "42", task_id)
    refresh.set()
    await expect_status(page, "open")
    await publish(service.url, "42", 4)
    await wait_tasks(page, [1, 2, 3, 4])
    await expect(page.locator("#resync")).to_be_hidden()
    assert len(mints) == 2
    assert count_requests(service.logs(), "/events", 401) == 0
    assert count_requests(service.logs(), "/events", 200) == 2


async def test_server_shutdown_reconnects_after_a_delay_from_the_last_id(
    browser: Browser, start_service: Callable[..., Service]
) -> None:
    service = start_service(retry_ms=400, demo_page=True)
    proxy = await CuttableProxy(service.port).start()
    try:
        page = await open_demo(browser, proxy.url, "user=42")
        await expect_status(page, "open")
        await publish(service.url, "42", 1)
        await wait_tasks(page, [1])
        last_id = (await page.locator("#last-id").text_content() or "").strip()
        before = len(proxy.requests)
        # A deploy: the replica drains, and its close event names the reason.
        service.process.send_signal(signal.SIGTERM)
        await expect_status(page, "reconnecting")
        badge = page.get_by_test_id("status")
        await expect(badge).to_have_attribute("title", "server_shutdown", timeout=WAIT_MS)
        assert await asyncio.to_thread(service.process.wait, 15) == 0
        restarted = await asyncio.to_thread(start_service, port=service.port, retry_ms=400,
                                            demo_page=True)
        await expect_status(page, "open")
        await publish(restarted.url, "42", 2)
        await wait_tasks(page, [1, 2])
        streams = [r for r in proxy.requests[before:] if r.startswith("GET /events")]
        # The client's own reconnect, from its last id; not the browser's retry.
        assert streams and all(f"lastEventId={last_id}" in r for r in streams), streams
        assert not any("last-event-id:" in r.lower() for r in streams), streams
    finally:
        await proxy.close()


async def test_reload_resumes_from_the_stored_id(browser: Browser, service: Service) -> None:
    page = await open_demo(browser, service.url, "user=42")
    await expect_status(page, "open")
    for task_id in (1, 2):
        await publish(service.url, "42", task_id)
    await wait_tasks(page, [1, 2])
    last_id = (await page.locator("#last-id").text_content() or "").strip()
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    # Hold the reloaded page's script: the old stream is gone and the new one
    # not yet open while events are published.
    loaded = asyncio.Event()

    async def hold(route: Route) -> None:
        await loaded.wait()
        await route.continue_()

    await page.route("**/static/sse-client.js", hold)
    reloading = asyncio.ensure_future(page.reload())
    await aeventually(lambda: _no_streams(service), 10, message="the old page's stream to close")
    for task_id in (3, 4):
        await publish(service.url, "42", task_id)
    loaded.set()
    await reloading
    await expect_status(page, "open")
    await publish(service.url, "42", 5)
    await wait_tasks(page, [3, 4, 5])
    await expect(page.locator("#resync")).to_be_hidden()
    assert len(streams) == 1 and f"lastEventId={last_id}" in streams[0], streams


async def _no_streams(service: Service) -> bool:
    return await open_streams(service.url) == 0


async def test_bad_token_closes_for_good(browser: Browser, service: Service) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(service.url)
    await page.fill("#token", "not-a-jwt")
    await page.click("#use-token")
    await expect_status(page, "closed")
    await expect(page.get_by_test_id("status")).to_have_attribute(
        "title", "authentication failed (401)")

    def refused() -> int:
        return count_requests(service.logs(), "/events", 401)

    await aeventually(lambda: refused() >= 1, 10, message="the refused stream in the access log")
    # The stream and one diagnosing request, and then nothing: no retry loop.
    await holds(lambda: refused() <= 2, 3, "at most two refused requests")
    await expect_status(page, "closed")
    await expect(page.locator("#events li")).to_have_count(0)


@pytest.mark.parametrize("allowed", [True, False], ids=["origin-allowed", "origin-not-allowed"])
async def test_cross_origin_stream_with_cookie(
    browser: Browser, start_service: Callable[..., Service], allowed: bool
) -> None:
    # The frontend and the service share the host "localhost" on different
    # ports: cross-origin (CORS applies) but same-site, so a SameSite=Lax
    # cookie set by the frontend's login travels with the stream request.
    frontend = await Frontend("localhost", mint=make_token).start()
    try:
        origins = frontend.origin if allowed else "http://localhost:1"
        service = start_service(retry_ms=400, cors_origins=origins)
        frontend.events_url = f"http://localhost:{service.port}/events"
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{frontend.origin}/login?user=carol")
        await expect(page.locator("#cookie-visible")).to_have_text("no")  # HttpOnly
        if allowed:
            await expect_status(page, "open")
            for task_id in (1, 2):
                await publish(service.url, "carol", task_id)
            await wait_tasks(page, [1, 2])
            # No token in the URL: the cookie authenticated the stream.
            assert count_requests(service.logs(), "/events", 200, query=False) >= 1
            assert count_requests(service.logs(), "/events", query=True) == 0
        else:
            await aeventually(lambda: count_requests(service.logs(), "/events", 200) >= 1, 10,
                              message="the stream request")
            await publish(service.url, "carol", 1)
            attempts = count_requests(service.logs(), "/events")
            await aeventually(lambda: count_requests(service.logs(), "/events") > attempts, 15,
                              message="another attempt")
            await expect_status(page, "connecting")
            await expect(page.locator("#events li")).to_have_count(0)
    finally:
        await frontend.close()


async def test_demo_cookie_login_streams_without_a_token_in_the_url(
    browser: Browser, service: Service
) -> None:
    page = await open_demo(browser, service.url, "user=erin&mode=cookie")
    await expect_status(page, "open")
    cookies = await page.context.cookies(service.url)
    assert [(c["name"], c["httpOnly"], c["secure"], c["sameSite"]) for c in cookies] == [
        ("sse_token", True, True, "Lax")]
    await publish(service.url, "erin", 7, "task.completed")
    await wait_tasks(page, [7])
    assert count_requests(service.logs(), "/events", 200, query=False) == 1


async def test_demo_routes_follow_the_settings(start_service: Callable[..., Service]) -> None:
    on = start_service(demo_page=True)
    off = start_service()
    # No HS256 secret (keys from a JWKS URL only): the page, but nothing that mints.
    no_secret = start_service(demo_page=True, jwt_secret="",
                              jwks_url="http://127.0.0.1:9/jwks.json")
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(f"{on.url}/")
        assert page.status_code == 200 and 'data-mint="true"' in page.text
        minted = await http.post(f"{on.url}/demo/token", json={"user": "42", "ttl": 60})
        claims = jwt.decode(minted.json()["token"], SECRET, algorithms=["HS256"])
        assert claims["sub"] == "42" and claims["exp"] - claims["iat"] == 60
        too_long = await http.post(f"{on.url}/demo/token", json={"user": "42", "ttl": 10**6})
        assert too_long.status_code == 422
        for path in ("/", "/demo/token", "/demo/session"):
            method = "GET" if path == "/" else "POST"
            reply = await http.request(method, f"{off.url}{path}", json={"user": "42"})
            assert reply.status_code == 404, (path, reply.status_code)
        assert (await http.get(f"{off.url}/static/sse-client.js")).status_code == 200
        page = await http.get(f"{no_secret.url}/")
        assert page.status_code == 200 and 'data-mint="false"' in page.text
        reply = await http.post(f"{no_secret.url}/demo/token", json={"user": "42"})
        assert reply.status_code == 404


async def test_refresh_before_any_event_resumes_from_the_ready_position(
    browser: Browser, start_service: Callable[..., Service]
) -> None:
    # The token expires before any event: the client's own reconnect (with a
    # fresh token) resumes from the position of the stream's `ready` frame, so
    # an event published while it fetched the token arrives, and no refetch.
    service = start_service(retry_ms=400, jwt_leeway_seconds=0, demo_page=True)
    page = await (await browser.new_context()).new_page()
    mints: list[Request] = []
    refreshing = asyncio.Event()
    release = asyncio.Event()

    async def mint(route: Route) -> None:
        mints.append(route.request)
        body = json.loads(route.request.post_data or "{}")
        if len(mints) == 2:
            refreshing.set()
            await asyncio.wait_for(release.wait(), WAIT_MS / 1000)
        await route.continue_(post_data=json.dumps({**body, "ttl": 2 if len(mints) == 1 else 3600}))

    await page.route("**/demo/token", mint)
    await page.goto(f"{service.url}/?user=42")
    await expect_status(page, "open")
    await expect(page.locator("#last-id")).to_have_text(re.compile(r"^[0-9a-z]+-0$"),
                                                         timeout=WAIT_MS)
    await asyncio.wait_for(refreshing.wait(), WAIT_MS / 1000)
    await publish(service.url, "42", 1)
    release.set()
    await wait_tasks(page, [1])
    await expect_status(page, "open")
    assert await page.locator("#resync").is_hidden()
    assert len(mints) == 2


# -- the publish form and the task board ---------------------------------------------


async def publish_with_form(page: Page, event: str, task_id: int, title: str = "",
                            status: str = "SUCCESS") -> None:
    """Publish through the page's form; the reply carries ``status``."""
    await page.select_option("#task-event", event)
    await page.fill("#task-id", str(task_id))
    await page.fill("#task-title", title)
    async with page.expect_response("**/demo/publish", timeout=WAIT_MS) as answer:
        await page.click("#publish")
    reply = await answer.value
    assert reply.status == 200 and (await reply.json())["status"] == status, await reply.text()


async def board(page: Page) -> list[tuple[str, str, str]]:
    """The board's rows: (task id, open or done, title)."""
    rows: list[list[str]] = await page.eval_on_selector_all("#board li", """rows => rows.map(
        row => [row.dataset.taskId, row.dataset.state,
                row.querySelector(".task-title").textContent])""")
    return [(task_id, state, title) for task_id, state, title in rows]


async def wait_board(page: Page, expected: list[tuple[str, str, str]]) -> None:
    async def shown() -> bool:
        return await board(page) == expected

    await aeventually(shown, WAIT_MS / 1000, message=f"the board to show {expected}")


async def test_the_form_publishes_and_the_board_applies_each_event(
    browser: Browser, service: Service
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(service.url)
    # Nobody to publish for before signing in.
    await expect(page.locator("#publish")).to_be_disabled()
    await page.fill("#user", "42")
    await page.click("#mint")
    await expect_status(page, "open")
    await expect(page.locator("#publish")).to_be_enabled()
    await expect(page.locator("#board-empty")).to_be_visible()
    await publish_with_form(page, "task.created", 1, "Water the plants")
    await wait_board(page, [("1", "open", "Water the plants")])
    await expect(page.locator("#publish-result")).to_have_text(
        "SUCCESS: task.created #1 for user 42")
    await expect(page.locator("#board-empty")).to_be_hidden()
    await publish_with_form(page, "task.created", 2, "Buy oat milk")
    await publish_with_form(page, "task.updated", 1, "Water the ferns")
    # Updated in place: the board is keyed by task id, not a list of events.
    await wait_board(page, [("1", "open", "Water the ferns"), ("2", "open", "Buy oat milk")])
    # No title in the event: the board keeps the one it has.
    await publish_with_form(page, "task.completed", 2)
    await wait_board(page, [("1", "open", "Water the ferns"), ("2", "done", "Buy oat milk")])
    await publish_with_form(page, "task.deleted", 1)
    await wait_board(page, [("2", "done", "Buy oat milk")])
    # A delivery from daprd lands on the same board.
    await publish(service.url, "42", 3)
    await wait_board(page, [("2", "done", "Buy oat milk"), ("3", "open", "t3")])
    await wait_tasks(page, [1, 2, 1, 2, 1, 3])
    # A request the endpoint refuses shows its reason, and changes nothing.
    await page.fill("#task-id", str(2**53))
    await page.click("#publish")
    await expect(page.locator("#publish-result")).to_have_text(
        "refused (422): task.id: Input should be less than or equal to 9007199254740991",
        timeout=WAIT_MS)
    await publish(service.url, "42", 4)
    await wait_tasks(page, [1, 2, 1, 2, 1, 3, 4])
    assert len(await board(page)) == 3
    await expect(page.locator("#resync")).to_be_hidden()


async def test_a_resync_clears_the_board_and_says_to_reload(
    browser: Browser, start_service: Callable[..., Service]
) -> None:
    # Two events of history: a reconnect that missed three finds its position
    # trimmed, and the server says resync (expired).
    service = start_service(retry_ms=400, demo_page=True, history_size=2, max_event_bytes=256)
    proxy = await CuttableProxy(service.port).start()
    try:
        # Signed in with the cookie: the form's requests carry no token of their own.
        page = await open_demo(browser, proxy.url, "user=42&mode=cookie")
        await expect_status(page, "open")
        for task_id in (1, 2):
            await publish_with_form(page, "task.created", task_id, f"task {task_id}")
        await wait_board(page, [("1", "open", "task 1"), ("2", "open", "task 2")])
        # Valid for the form, too large for SSE_MAX_EVENT_BYTES: the ingest's
        # DROP and its reason reach the page.
        await publish_with_form(page, "task.created", 3, "x" * 200, status="DROP")
        await expect(page.locator("#publish-result")).to_have_text(
            re.compile(r"^DROP: event of \d+ bytes exceeds SSE_MAX_EVENT_BYTES=256$"))
        proxy.cut()
        await expect_status(page, "reconnecting")
        for task_id in (7, 8, 9):
            await publish(service.url, "42", task_id)
        proxy.release()
        await expect(page.locator("#resync")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#resync-reason")).to_have_text("expired")
        await expect(page.locator("#resync")).to_contain_text("reload from your API")
        await wait_board(page, [])
        await expect(page.locator("#board-empty")).to_be_visible()
        await expect_status(page, "open")
        # Later events land on the emptied board, as they would on a refetched one.
        await publish_with_form(page, "task.created", 10, "after the resync")
        await wait_board(page, [("10", "open", "after the resync")])
        await wait_tasks(page, [1, 2, 10])
    finally:
        await proxy.close()
