"""``sse-service``: parses arguments and delegates; no behaviour lives here.

Every error is one line on stderr, ``sse-service: <what>: <problem>``, and a
non-zero exit status: 2 for a bad invocation or bad settings, 1 when the
command ran and failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import httpx
from pydantic import AliasChoices, ValidationError
from pydantic_settings import SettingsError

from .auth import mint_token
from .config import Settings, redact_url
from .envelope import cloudevent, delivery_headers
from .events import EVENT_TYPES, REVOKED
from .logs import escape

__all__ = ["main"]

PROG = "sse-service"
#: Settings the command line can set, and the flag that sets each.
FLAGS = {"host": "--host", "port": "--port"}
_MESSAGE_CHARS = 500


def one_line(text: object) -> str:
    """``text`` as one line: whitespace runs collapsed, control characters escaped."""
    return escape(" ".join(str(text).split()), limit=_MESSAGE_CHARS)


def fail(what: str, problem: object, status: int = 2) -> int:
    print(f"{PROG}: {one_line(what)}: {one_line(problem)}", file=sys.stderr)
    return status


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage stays behind ``--help``)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    revoke = commands.add_parser(
        "revoke", help="sign a user out everywhere: deliver a session.revoked event as daprd would")
    revoke.add_argument("--user", required=True)
    revoke.add_argument("--not-before", type=float, dest="not_before",
                        help="unix seconds; tokens issued before are refused (default: now)")
    revoke.add_argument("--id", help="CloudEvent id (default: a new uuid)")
    revoke.add_argument("--url", default="http://127.0.0.1:8005")
    commands.add_parser("check", help="exit 0 when the history backend is reachable")
    return parser


def _setting_name(field: str) -> str:
    """The environment variable (or flag) a person sets for ``field``."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        names = [c for c in info.validation_alias.choices if isinstance(c, str) and c.isupper()]
        if names:
            return names[0]
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def _settings_errors(exc: ValidationError, overrides: dict[str, Any]) -> int:
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = FLAGS[field] if field in overrides else _setting_name(field)
        print(f"{PROG}: {name}: {one_line(error['msg'].removeprefix('Value error, '))}",
              file=sys.stderr)
    return 2


def _redis_url_problem(settings: Settings) -> str | None:
    """Why the Redis client cannot use ``SSE_REDIS_URL``, or None; nothing connects."""
    if settings.backend != "redis":
        return None
    from redis.asyncio import ConnectionPool

    url = settings.redis_url.get_secret_value()
    try:
        redact_url(url)  # what the logs show: parses the port
        ConnectionPool.from_url(url)
    except ValueError as exc:
        # Its messages name the part at fault, never the URL (nor its password).
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k in FLAGS if (v := getattr(args, k, None)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return _settings_errors(exc, overrides)
    except SettingsError as exc:
        return fail("settings", exc)
    if args.command in ("serve", "check") and (problem := _redis_url_problem(settings)):
        return fail("SSE_REDIS_URL", problem)
    if args.command == "serve":
        from .server import serve

        try:
            serve(settings)
        except ValueError as exc:
            print(f"{PROG}: {one_line(exc)}", file=sys.stderr)
            return 2
        return 0
    if args.command == "token":
        if settings.jwt_secret is None:
            return fail("token", "needs SSE_JWT_SECRET (or BETTER_AUTH_SECRET)")
        print(mint_token(settings.jwt_secret.get_secret_value(), args.user, args.ttl))
        return 0
    if args.command == "publish":
        return _publish(settings, args)
    if args.command == "revoke":
        # Whole seconds by default, as token iat claims are: a login in the
        # same second as the sign-out is not refused.
        not_before = int(time.time()) if args.not_before is None else args.not_before
        if not math.isfinite(not_before):
            return fail("--not-before", "must be a finite number of unix seconds")
        return _deliver(settings, args, {"event_type": REVOKED, "user_id": args.user,
                                         "not_before": not_before})
    return asyncio.run(_check(settings))


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    try:
        task = json.loads(args.task, parse_constant=_not_json)
    except ValueError as exc:
        return fail("--task is not JSON", exc)
    payload = {"event_type": args.event, "user_id": args.user, "task": task}
    return _deliver(settings, args, payload)


def _deliver(settings: Settings, args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """POST ``payload`` to ``args.url`` as daprd delivers it; print the reply status."""
    headers = delivery_headers(settings)
    url = args.url.rstrip("/") + "/task-updates"
    try:
        reply = httpx.post(url, content=cloudevent(settings, payload, args.id), headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return fail(f"cannot reach {url}", str(exc) or type(exc).__name__, 1)
    status, reason = _reply_status(reply)
    line = f"{reply.status_code} {status}".strip()
    print(f"{line}: {one_line(reason)}" if reason else line)
    return 0 if reply.status_code == 200 and status == "SUCCESS" else 1


def _not_json(constant: str) -> None:
    # json.loads takes NaN and Infinity; no JSON parser on the other side does.
    raise ValueError(f"{constant} is not a JSON value")


def _reply_status(reply: httpx.Response) -> tuple[str, str]:
    """The ``status`` and ``reason`` of a Dapr reply; empty where it has none."""
    try:
        body = reply.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    status, reason = body.get("status"), body.get("reason")
    return (one_line(status) if isinstance(status, str) else "",
            reason if isinstance(reason, str) else "")


async def _check(settings: Settings) -> int:
    from .app import create_broker
    from .errors import BackendUnavailable

    broker = create_broker(settings)
    try:
        await broker.ping()
    except BackendUnavailable as exc:
        print(f"{settings.backend}: unavailable: {one_line(exc.reason)}")
        return 1
    finally:
        await broker.close()
    where = settings.redis_url_for_logs if settings.backend == "redis" else "in-process"
    print(f"{settings.backend}: ok ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
