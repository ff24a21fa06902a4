"""``sse-service`` as a real subprocess: token, publish, check and serve's start-up errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from support import SECRET, free_port
from support import cloudevent as delivery

pytestmark = pytest.mark.timeout(60)


def cli(*args: str, timeout: float = 20, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sse_service ARGS`` with a clean environment plus ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SSE_") and k not in ("APP_API_TOKEN", "BETTER_AUTH_SECRET")}
    return subprocess.run([sys.executable, "-m", "sse_service", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


async def acli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """:func:`cli` without blocking the event loop (streams keep reading meanwhile)."""
    return await asyncio.to_thread(cli, *args, **env)


def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def assert_one_line_error(result: subprocess.CompletedProcess[str], start: str,
                          status: int = 2) -> str:
    """The command failed with ``status`` and said why in one stderr line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(start), result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


@contextmanager
def replying(status: int, body: bytes) -> Iterator[str]:
    """A stand-in for a service that answers every POST with ``status`` and ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- token ---------------------------------------------------------------------------


def test_token_prints_a_jwt_signed_with_the_secret():
    before = time.time()
    result = cli("token", "--user", "42", "--ttl", "60", SSE_JWT_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert before + 60 - 2 <= claims["exp"] <= time.time() + 60 + 2
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-" + "x" * 32, algorithms=["HS256"])


def test_token_reads_the_better_auth_secret_alias():
    result = cli("token", "--user", "7", BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "7"
    assert 3600 - 5 <= claims["exp"] - time.time() <= 3600 + 5


def test_token_without_a_secret_exits_2():
    result = cli("token", "--user", "42")
    assert result.returncode == 2
    assert "SSE_JWT_SECRET" in result.stderr
    assert result.stdout == ""


async def test_a_cli_token_opens_a_stream(start_service, open_stream):
    svc = start_service()
    uid = user()
    result = await acli("token", "--user", uid, "--ttl", "60", SSE_JWT_SECRET=SECRET)
    stream = await open_stream(svc, token=result.stdout.strip())
    svc.publish(uid, 5)
    assert await stream.tasks(1) == [5]


# -- publish -------------------------------------------------------------------------


async def test_publish_delivers_to_a_connected_stream(start_service, open_stream):
    svc = start_service()
    uid = user()
    stream = await open_stream(svc, token=svc.token(uid))
    result = await acli("publish", "--user", uid, "--event", "task.created",
                        "--task", '{"id": 1}', "--url", svc.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "200 SUCCESS\n"
    event = await stream.next()
    assert json.loads(event.data) == {"type": "task_update", "event": "task.created",
                                      "task": {"id": 1}}


async def test_publish_with_a_fixed_id_is_delivered_once(start_service, open_stream):
    svc = start_service()
    uid = user()
    stream = await open_stream(svc, token=svc.token(uid))
    args = ("publish", "--user", uid, "--event", "task.updated", "--id", "evt-1")
    for task in ('{"id": 1}', '{"id": 1, "again": true}'):
        result = await acli(*args, "--task", task, "--url", svc.url + "/")
        assert (result.returncode, result.stdout) == (0, "200 SUCCESS\n"), result.stderr
    await acli("publish", "--user", uid, "--event", "task.deleted", "--task", '{"id": 2}',
               "--url", svc.url)
    assert await stream.tasks(2) == [1, 2]


async def test_publish_sends_the_app_api_token(start_service, open_stream):
    svc = start_service(APP_API_TOKEN="cli-app-token")
    uid = user()
    stream = await open_stream(svc, token=svc.token(uid))
    args = ("publish", "--user", uid, "--event", "task.completed", "--task", '{"id": 3}',
            "--url", svc.url)
    refused = await acli(*args, APP_API_TOKEN="some-other-token")
    assert refused.returncode != 0
    assert refused.stdout.strip() == "401"
    missing = await acli(*args)
    assert missing.returncode != 0 and missing.stdout.strip() == "401"
    accepted = await acli(*args, APP_API_TOKEN="cli-app-token")
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == "200 SUCCESS\n"
    assert await stream.tasks(1) == [3]


def test_publish_of_an_event_the_service_drops_exits_non_zero(start_service):
    svc = start_service()
    uid = user()
    result = cli("publish", "--user", uid, "--event", "task.created", "--task", "[1, 2]",
                 "--url", svc.url)
    assert result.returncode == 1
    # What the service answers the same event, delivered as daprd would.
    body = {"event_type": "task.created", "user_id": uid, "task": [1, 2]}
    reply = svc.deliver(delivery(body))
    assert reply.json()["status"] == "DROP"
    reason = reply.json().get("reason")
    assert result.stdout == (f"200 DROP: {reason}\n" if reason else "200 DROP\n")


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        ({"status": "DROP", "reason": "task must be a JSON object"},
         "200 DROP: task must be a JSON object"),
        ({"status": "DROP"}, "200 DROP"),
        ({"status": "RETRY", "reason": "backend unavailable"}, "200 RETRY: backend unavailable"),
        ({"status": "DROP", "reason": "line\r\nFORGED"}, "200 DROP: line FORGED"),
        ({"status": "DROP", "reason": 42}, "200 DROP"),
        ([1, 2], "200"),
        ("SUCCESS", "200"),
    ],
    ids=["drop-reason", "drop", "retry-reason", "reason-on-one-line", "reason-not-text",
         "a-list", "a-string"],
)
def test_publish_prints_the_reason_of_the_reply(reply, shown):
    with replying(200, json.dumps(reply).encode()) as url:
        result = cli("publish", "--user", "42", "--event", "task.created", "--url", url)
    assert result.returncode == 1
    assert result.stdout == shown + "\n"
    assert result.stderr == ""


def test_publish_of_a_reply_that_is_not_json_prints_the_status():
    with replying(502, b"<html>bad gateway</html>") as url:
        result = cli("publish", "--user", "42", "--event", "task.created", "--url", url)
    assert (result.returncode, result.stdout, result.stderr) == (1, "502\n", "")


def test_publish_to_a_closed_port_exits_non_zero_with_a_clear_message():
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("publish", "--user", "42", "--event", "task.created", "--task", "{}",
                 "--url", url)
    assert_one_line_error(result, f"sse-service: cannot reach {url}/task-updates: ", 1)


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1:9", "127.0.0.1:9"])
def test_publish_to_a_bad_url_exits_non_zero_with_one_line(url):
    result = cli("publish", "--user", "42", "--event", "task.created", "--url", url)
    assert_one_line_error(result, "sse-service: cannot reach ", 1)


@pytest.mark.parametrize("task", ["{id: 1}", '{"id": NaN}', '{"n": -Infinity}'])
def test_publish_with_a_task_that_is_not_json_exits_2(task):
    result = cli("publish", "--user", "42", "--event", "task.created", "--task", task,
                 "--url", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(result, "sse-service: --task is not JSON: ")


def test_publish_refuses_an_unknown_event_type():
    result = cli("publish", "--user", "42", "--event", "task.exploded")
    line = assert_one_line_error(result, "sse-service publish: argument --event: invalid choice")
    assert "task.created" in line and "sse-service publish --help" in line


@pytest.mark.parametrize(
    "args",
    [(), ("launch",), ("token",), ("token", "--user", "1", "--ttl", "soon"), ("serve", "-x")],
    ids=["no-command", "unknown-command", "missing-user", "bad-ttl", "unknown-flag"],
)
def test_usage_errors_are_one_line(args):
    result = cli(*args, SSE_JWT_SECRET=SECRET)
    assert_one_line_error(result, "sse-service")
    assert "--help" in result.stderr


# -- check and settings ---------------------------------------------------------------


def test_check_with_the_memory_backend_exits_0():
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "memory: ok (in-process)"


def test_check_with_an_unreachable_redis_exits_1_without_showing_the_password():
    url = f"redis://default:pw-5ecret-77@127.0.0.1:{free_port()}/0"
    result = cli("check", SSE_BACKEND="redis", SSE_REDIS_URL=url)
    assert result.returncode == 1
    assert result.stdout.startswith("redis: unavailable")
    assert "pw-5ecret-77" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


PUBLISH = ("publish", "--user", "1", "--event", "task.created", "--url", "http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("command", "env", "line"),
    [
        (("check",), {"SSE_KEEPALIVE_SECONDS": "-1"},
         "sse-service: SSE_KEEPALIVE_SECONDS: Input should be greater than 0"),
        (("token", "--user", "1"), {"SSE_JWT_SECRET": SECRET, "SSE_BACKEND": "kafka"},
         "sse-service: SSE_BACKEND: Input should be 'memory' or 'redis'"),
        (("serve",), {"SSE_JWT_SECRET": SECRET, "SSE_JWT_ALGORITHMS": "HS256,none"},
         "sse-service: SSE_JWT_ALGORITHMS: unsupported JWT algorithms: ['none'] (never 'none')"),
        (("serve", "--port", "70000"), {"SSE_JWT_SECRET": SECRET},
         "sse-service: --port: Input should be less than or equal to 65535"),
        (("serve",), {"SSE_JWT_SECRET": SECRET, "SSE_PORT": "eighty"},
         "sse-service: SSE_PORT: Input should be a valid integer"),
        (PUBLISH, {"SSE_PORT": "eighty"},
         "sse-service: SSE_PORT: Input should be a valid integer"),
        (PUBLISH, {"SSE_LOG_LEVEL": "loud"},
         "sse-service: SSE_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'"),
    ],
    ids=["check", "token", "serve-algorithms", "serve-port-flag", "serve-port", "publish",
         "publish-log-level"],
)
def test_an_invalid_setting_is_one_line_naming_its_variable(command, env, line):
    result = cli(*command, **env)
    assert assert_one_line_error(result, "sse-service: ").startswith(line)


def test_each_invalid_setting_gets_its_own_line():
    result = cli("check", SSE_PORT="eighty", SSE_BACKEND="kafka", SSE_QUEUE_SIZE="0")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "SSE_BACKEND", "SSE_PORT", "SSE_QUEUE_SIZE"]
    assert all(line.startswith("sse-service: SSE_") for line in lines), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("check",), ("serve", "--port", "0")])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://default:pw-5ecret-77@127.0.0.1:6379/0", "must specify one of the following"),
        ("redis://default:pw-5ecret-77@127.0.0.1:99999/0", "Port out of range"),
        ("redis://:pw-5ecret-77@127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ],
    ids=["scheme", "port", "option"],
)
def test_an_unusable_redis_url_is_one_line(command, url, problem):
    result = cli(*command, SSE_JWT_SECRET=SECRET, SSE_BACKEND="redis", SSE_REDIS_URL=url,
                 SSE_HOST="127.0.0.1")
    line = assert_one_line_error(result, "sse-service: SSE_REDIS_URL: ")
    assert problem in line
    assert "pw-5ecret-77" not in result.stdout + result.stderr


def test_serve_without_secret_or_jwks_exits_2():
    result = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()))
    line = assert_one_line_error(result, "sse-service: ")
    assert "SSE_JWT_SECRET" in line and "SSE_JWKS_URL" in line


def test_serve_with_an_empty_secret_exits_2():
    result = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), SSE_JWT_SECRET="")
    assert result.returncode == 2
    assert "SSE_JWT_SECRET" in result.stderr
