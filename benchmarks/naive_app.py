"""A straightforward FastAPI + sse-starlette implementation of the same contract.

It is the baseline the benchmarks compare the service against, written the
way most tutorials write it:

* the bearer token is verified with pyjwt in a FastAPI dependency;
* every stream is an ``EventSourceResponse`` around its own async generator,
  fed by an unbounded ``asyncio.Queue`` registered in a ``user -> queues`` dict;
* each event is serialised with ``json.dumps`` once per connection;
* keepalives are sse-starlette's own per-connection ping task;
* ``POST /task-updates`` accepts a single CloudEvent or a Dapr bulk envelope
  and puts every event into every queue of its user.

It keeps no history (no ``Last-Event-ID`` replay): ids are a per-user counter.
Access logging is on, as in the service, so both pay for one log line per request.

    SSE_JWT_SECRET=... python benchmarks/naive_app.py --port 8006
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import jwt
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette import EventSourceResponse, ServerSentEvent

SECRET = os.environ.get("SSE_JWT_SECRET", "")
KEEPALIVE_SECONDS = float(os.environ.get("SSE_KEEPALIVE_SECONDS", "15"))

app = FastAPI(title="naive-sse")
bearer = HTTPBearer()

subscribers: dict[str, set[asyncio.Queue[tuple[str, dict[str, Any]]]]] = defaultdict(set)
next_id: dict[str, int] = defaultdict(int)


async def current_user(
    credentials: HTTPAuthorizationCredentials = Depends(bearer),  # noqa: B008
) -> str:
    try:
        claims = jwt.decode(credentials.credentials, SECRET, algorithms=["HS256"])
    except jwt.PyJWTError as exc:
        raise HTTPException(status_code=401, detail="invalid token") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise HTTPException(status_code=401, detail="invalid subject")
    return subject


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/events")
async def events(request: Request, user_id: str = Depends(current_user)) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent | dict[str, Any]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        subscribers[user_id].add(queue)
        try:
            yield ServerSentEvent(comment="connected", retry=3000, sep="\n")
            while True:
                event_id, event = await queue.get()
                yield {"id": event_id, "data": json.dumps(event)}
        finally:
            subscribers[user_id].discard(queue)
            if not subscribers[user_id]:
                del subscribers[user_id]

    return EventSourceResponse(
        stream(),
        ping=KEEPALIVE_SECONDS,
        sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="keepalive", sep="\n"),
    )


def publish(payload: dict[str, Any]) -> None:
    user_id = str(payload["user_id"])
    event = {"type": "task_update", "event": payload["event_type"], "task": payload["task"]}
    next_id[user_id] += 1
    event_id = str(next_id[user_id])
    for queue in subscribers.get(user_id, ()):
        queue.put_nowait((event_id, event))


def deliver(cloud_event: dict[str, Any]) -> str:
    try:
        data = cloud_event["data"]
        if isinstance(data, str):
            data = json.loads(data)
        publish(data)
    except (KeyError, TypeError, ValueError):
        return "DROP"
    return "SUCCESS"


@app.post("/task-updates")
async def task_updates(request: Request) -> dict[str, Any]:
    body = await request.json()
    if isinstance(body, dict) and isinstance(body.get("entries"), list):
        return {
            "statuses": [
                {"entryId": entry["entryId"], "status": deliver(entry["event"])}
                for entry in body["entries"]
            ]
        }
    return {"status": deliver(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args()
    if not SECRET:
        parser.error("set SSE_JWT_SECRET")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=not args.no_access_log,
        backlog=4096,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
