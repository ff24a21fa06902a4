"""``sse-service``: parses arguments and delegates; no behaviour lives here."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from .auth import mint_token
from .config import Settings
from .events import EVENT_TYPES

__all__ = ["cloudevent", "main"]

NO_TRACE = "00-00000000000000000000000000000000-0000000000000000-00"


def cloudevent(settings: Settings, payload: dict[str, Any], event_id: str | None = None) -> bytes:
    """The bytes daprd delivers for a JSON publish: compact, keys sorted."""
    envelope = {
        "data": payload,
        "datacontenttype": "application/json",
        "id": event_id or str(uuid.uuid4()),
        "pubsubname": settings.pubsub_name,
        "source": "sse-service-cli",
        "specversion": "1.0",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "topic": settings.topic,
        "traceid": NO_TRACE,
        "traceparent": NO_TRACE,
        "tracestate": "",
        "type": "com.dapr.event.sent",
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    token = commands.add_parser("token", help="print a development JWT (HS256)")
    token.add_argument("--user", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    publish = commands.add_parser("publish", help="deliver one event as the Dapr sidecar would")
    publish.add_argument("--user", required=True)
    publish.add_argument("--event", required=True, choices=sorted(EVENT_TYPES))
    publish.add_argument("--task", default="{}", help="task JSON object")
    publish.add_argument("--id", help="CloudEvent id (default: a new uuid)")
    publish.add_argument("--url", default="http://127.0.0.1:8005")
    commands.add_parser("check", help="exit 0 when the history backend is reachable")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"sse-service: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .server import serve

        try:
            serve(settings)
        except ValueError as exc:
            print(f"sse-service: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "token":
        if settings.jwt_secret is None:
            print("sse-service: token needs SSE_JWT_SECRET", file=sys.stderr)
            return 2
        print(mint_token(settings.jwt_secret.get_secret_value(), args.user, args.ttl))
        return 0
    if args.command == "publish":
        return _publish(settings, args)
    return asyncio.run(_check(settings))


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    try:
        task = json.loads(args.task)
    except ValueError as exc:
        print(f"sse-service: --task is not JSON: {exc}", file=sys.stderr)
        return 2
    payload = {"event_type": args.event, "user_id": args.user, "task": task}
    headers = {
        "content-type": "application/cloudevents+json",
        "traceparent": NO_TRACE,
        "pubsubname": settings.pubsub_name,
    }
    if settings.app_api_token is not None:
        headers["dapr-api-token"] = settings.app_api_token.get_secret_value()
    url = args.url.rstrip("/") + "/task-updates"
    try:
        reply = httpx.post(url, content=cloudevent(settings, payload, args.id), headers=headers)
    except httpx.HTTPError as exc:
        print(f"sse-service: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        status = reply.json().get("status", "")
    except ValueError:
        status = ""
    print(f"{reply.status_code} {status}".strip())
    return 0 if reply.status_code == 200 and status == "SUCCESS" else 1


async def _check(settings: Settings) -> int:
    from .app import create_broker
    from .errors import BackendUnavailable

    broker = create_broker(settings)
    try:
        await broker.ping()
    except BackendUnavailable as exc:
        print(f"{settings.backend}: unavailable: {exc.reason}")
        return 1
    finally:
        await broker.close()
    where = settings.redis_url_for_logs if settings.backend == "redis" else "in-process"
    print(f"{settings.backend}: ok ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
