"""Our ``GET /dapr/subscribe`` against the one the Dapr SDK's ``DaprApp`` serves.

The service declares its subscription itself instead of through
``dapr.ext.fastapi.DaprApp`` (README, "Design notes").  This pins the two
together: bulk settings aside, our entry is exactly what
``DaprApp.subscribe`` declares for the same pubsub, topic, route and
dead-letter topic.  A renamed or added field on either side, or a route
other than the one daprd is configured to post to, fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from dapr.ext.fastapi import DaprApp
from fastapi import FastAPI

from support import NO_TRACE, aeventually, cloudevent, free_port, task_event

pytestmark = pytest.mark.timeout(30)

# Where daprd posts deliveries: the declarative Subscription
# (manifests/components/declarative-subscription) and docs/dapr.md name it too.
ROUTE = "/task-updates"
BULK = {"enabled": True, "maxMessagesCount": 100, "maxAwaitDurationMs": 40}

# Our settings, and the same subscription in DaprApp.subscribe's terms.
CASES: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "defaults": ({}, {"pubsub": "taskpubsub", "topic": "task-updates",
                      "dead_letter_topic": None}),
    "dead-letter": ({"dead_letter_topic": "task-updates-dlq"},
                    {"pubsub": "taskpubsub", "topic": "task-updates",
                     "dead_letter_topic": "task-updates-dlq"}),
    "renamed": ({"pubsub_name": "orders", "topic": "order-updates",
                 "dead_letter_topic": "order-updates-dlq"},
                {"pubsub": "orders", "topic": "order-updates",
                 "dead_letter_topic": "order-updates-dlq"}),
}


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under a real uvicorn on a free port, on this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve())
    try:
        await aeventually(lambda: server.started or task.done(), 10,
                          message="the DaprApp server to start")
        assert server.started, task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def daprapp_subscription(pubsub: str, topic: str,
                               dead_letter_topic: str | None) -> list[dict[str, Any]]:
    """What an app built on ``DaprApp`` answers daprd for this subscription."""
    app = FastAPI()
    dapr_app = DaprApp(app)

    async def deliveries() -> dict[str, str]:
        return {"status": "SUCCESS"}

    dapr_app.subscribe(pubsub=pubsub, topic=topic, route=ROUTE,
                       dead_letter_topic=dead_letter_topic)(deliveries)
    async with serving(app) as url, httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(f"{url}/dapr/subscribe")
    assert reply.status_code == 200, reply.text
    return list(reply.json())


@pytest.mark.parametrize("case", list(CASES))
async def test_our_subscription_is_what_daprapp_declares_plus_bulk(start_service, case):
    settings, declared = CASES[case]
    service = start_service(**settings)
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(f"{service.url}/dapr/subscribe")
        assert reply.status_code == 200, reply.text
        ours = reply.json()
        assert [entry.pop("bulkSubscribe", None) for entry in ours] == [BULK]
        assert ours == await daprapp_subscription(**declared)
        # The declared route is where the service takes deliveries.
        delivery = cloudevent(task_event("42", 1), pubsubname=declared["pubsub"],
                              topic=declared["topic"])
        posted = await client.post(
            f"{service.url}{ours[0]['route']}", content=delivery,
            headers={"content-type": "application/cloudevents+json", "traceparent": NO_TRACE,
                     "pubsubname": declared["pubsub"]})
    assert posted.status_code == 200 and posted.json()["status"] == "SUCCESS", posted.text
