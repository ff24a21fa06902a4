"""``sse-service`` as a real subprocess: token, publish, check and serve's start-up errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import jwt
import pytest

from conftest import SECRET, free_port

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
    result = cli("publish", "--user", user(), "--event", "task.created", "--task", "[1, 2]",
                 "--url", svc.url)
    assert result.returncode == 1
    assert result.stdout == "200 DROP\n"


def test_publish_to_a_closed_port_exits_non_zero_with_a_clear_message():
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("publish", "--user", "42", "--event", "task.created", "--task", "{}",
                 "--url", url)
    assert result.returncode != 0
    assert f"cannot reach {url}/task-updates" in result.stderr
    assert "Traceback" not in result.stderr


def test_publish_with_a_task_that_is_not_json_exits_2():
    result = cli("publish", "--user", "42", "--event", "task.created", "--task", "{id: 1}",
                 "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "--task is not JSON" in result.stderr


def test_publish_refuses_an_unknown_event_type():
    result = cli("publish", "--user", "42", "--event", "task.exploded")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and "task.created" in result.stderr


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


@pytest.mark.parametrize(
    ("command", "env", "field"),
    [
        (("check",), {"SSE_KEEPALIVE_SECONDS": "-1"}, "keepalive_seconds"),
        (("token", "--user", "1"), {"SSE_JWT_SECRET": SECRET, "SSE_BACKEND": "kafka"},
         "backend"),
        (("serve",), {"SSE_JWT_SECRET": SECRET, "SSE_JWT_ALGORITHMS": "HS256,none"},
         "jwt_algorithms"),
        (("serve", "--port", "70000"), {"SSE_JWT_SECRET": SECRET}, "port"),
    ],
    ids=["keepalive", "backend", "algorithms", "port"],
)
def test_invalid_settings_exit_2_with_a_clear_message(command, env, field):
    result = cli(*command, **env)
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
    assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_secret_or_jwks_exits_2():
    result = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()))
    assert result.returncode == 2
    assert "SSE_JWT_SECRET" in result.stderr and "SSE_JWKS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_an_empty_secret_exits_2():
    result = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), SSE_JWT_SECRET="")
    assert result.returncode == 2
    assert "SSE_JWT_SECRET" in result.stderr
