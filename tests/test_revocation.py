"""Sign out everywhere: a ``session.revoked`` event ends a user's streams on every
replica and refuses the user's older tokens until ``SSE_REVOCATION_TTL_SECONDS``.

The broker conformance runs on both backends (``make_broker`` from
tests/test_broker.py); the streams run against real services on both stream
paths, the replicas on one real redis-server, the CLI as a subprocess.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from typing import Any

import jwt
import pytest

from sse_service.broker import Position
from sse_service.broker_memory import MemoryBroker
from sse_service.broker_redis import RedisBroker
from sse_service.config import Settings
from sse_service.errors import BackendUnavailable
from sse_service.ingest import Ingest
from sse_service.redis_keys import user_keys
from support import SECRET, Service, Stream, aeventually, cloudevent, make_token, task_event
from test_broker import MakeBroker, make_broker  # noqa: F401
from test_cli import acli
from test_ingest import BULK_HEADERS, bulk_body, bulk_entry

pytestmark = [pytest.mark.timeout(60)]


def uid() -> str:
    return "u-" + uuid.uuid4().hex[:10]


def revocation(user: str, not_before: Any) -> dict[str, Any]:
    return {"event_type": "session.revoked", "user_id": user, "not_before": not_before}


def token_issued(user: str, issued_at: int | None) -> str:
    """An HS256 token with ``iat`` at ``issued_at`` (none when ``None``)."""
    if issued_at is None:
        return jwt.encode({"sub": user, "exp": time.time() + 3600}, SECRET, algorithm="HS256")
    return make_token(user, iat=issued_at)


def dapr_reply(service: Service, payload: object) -> str:
    """A single delivery as daprd sends it; the status daprd reads from the reply."""
    reply = service.deliver(cloudevent(payload))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["status"])


async def refused(open_stream: Any, service: Service, token: str) -> str:
    response = await open_stream(service, token=token, expect=401)
    return str(response.json()["detail"])


async def closed_as_revoked(stream: Stream) -> None:
    event = await stream.next(timeout=10)
    assert (event.event, json.loads(event.data)) == (
        "close", {"type": "close", "reason": "revoked"})
    await stream.wait_ended()


# -- the broker contract, on both backends ------------------------------------------
async def started(make_broker: MakeBroker) -> tuple[Any, Any, list[tuple[str, float]]]:  # noqa: F811
    broker, sink = await make_broker()
    heard: list[tuple[str, float]] = []

    def revoked(user_id: str, not_before: float) -> None:
        heard.append((user_id, not_before))
        sink._changed.set()

    sink.revoked = revoked  # looked up when a sign-out arrives
    return broker, sink, heard


async def test_revoke_is_read_with_every_replay_and_keeps_the_latest(
        make_broker: MakeBroker) -> None:  # noqa: F811
    broker, _, _ = await started(make_broker)
    await broker.append("u", "k1", b'{"n":1}')
    before = await broker.replay("u", None)
    assert before.revoked_before is None
    await broker.revoke("u", 2000.0, 3600)
    await broker.revoke("u", 1000.0, 3600)  # an older one, arriving late
    head = (await broker.replay("u", None)).head
    assert head == before.head, "a sign-out must not take an offset"
    for after in (None, Position(head.epoch, 0), Position(head.epoch, 99),
                  Position("other", 1)):
        assert (await broker.replay("u", after)).revoked_before == 2000.0
    assert (await broker.replay("v", None)).revoked_before is None
    await broker.revoke("u", 3000.5, 3600)
    assert (await broker.replay("u", None)).revoked_before == 3000.5


async def test_revoke_reaches_the_sink_of_a_subscribed_user(make_broker: MakeBroker) -> None:  # noqa: F811
    broker, sink, heard = await started(make_broker)
    await broker.subscribe("u")
    await broker.revoke("u", 1500.0, 3600)
    await sink.wait_for(lambda: len(heard) == 1)
    await broker.revoke("u", 1000.0, 3600)
    await sink.wait_for(lambda: len(heard) == 2)
    # The sink hears the sign-out in force, the later one.
    assert heard == [("u", 1500.0), ("u", 1500.0)]
    # A record after it still arrives, and no record was made of the sign-out.
    await broker.append("u", "k1", b"{}")
    await sink.wait_for(lambda: len(sink.records) == 1)
    assert sink.offsets("u") == [1]


async def test_revoke_lapses_after_its_ttl(make_broker: MakeBroker) -> None:  # noqa: F811
    broker, _, _ = await started(make_broker)
    await broker.revoke("u", 1000.0, 0.3)
    assert (await broker.replay("u", None)).revoked_before == 1000.0

    async def lapsed() -> bool:
        if (await broker.replay("u", None)).revoked_before is None:
            return True
        await make_broker.let_time_pass(0.1)
        return False

    await aeventually(lapsed, 10, message="the sign-out never lapsed", interval=0)
    if isinstance(broker, MemoryBroker):
        # The sweeper forgets it: memory is bounded by the sign-outs within the TTL.
        await aeventually(lambda: not broker._revoked, 10, interval=0.01,
                          message="the sweeper never forgot the sign-out")


async def test_redis_keeps_the_sign_out_in_its_own_key_for_the_ttl(redis_server) -> None:
    server = redis_server()
    broker = RedisBroker(Settings(backend="redis", redis_url=server.url))
    try:
        await broker.revoke("u", 1234.0, 60)
        await broker.revoke("u", 1000.0, 30)
    finally:
        await broker.close()
    name = user_keys("u").revoked
    assert name == "sse:{u:u}:revoked"
    assert server.command("GET", name) in (b"1234.0", "1234.0")
    assert 30_000 < server.command("PTTL", name) <= 60_000


class _RevokeFailsOnce(MemoryBroker):
    def __init__(self) -> None:
        super().__init__(history_size=100, history_ttl_seconds=3600)
        self.fail = True

    async def revoke(self, user_id: str, not_before: float, ttl_seconds: float) -> None:
        if self.fail:
            self.fail = False
            raise BackendUnavailable("redis is restarting")
        await super().revoke(user_id, not_before, ttl_seconds)


async def test_a_sign_out_the_backend_cannot_store_is_retried_and_keeps_the_bulk_order() -> None:
    broker = _RevokeFailsOnce()
    ingest = Ingest(broker, Settings(jwt_secret="s"))
    events = [task_event("o", 1), revocation("o", 1000), task_event("o", 2)]
    entries = [bulk_entry(str(n), json.loads(cloudevent(e, f"ce-{n}")), {})
               for n, e in enumerate(events)]
    first = (await ingest.handle(bulk_body(entries), BULK_HEADERS)).content
    assert [s["status"] for s in first["statuses"]] == ["SUCCESS", "RETRY", "RETRY"]
    assert (await broker.replay("o", None)).revoked_before is None
    # daprd sends the batch again: the first entry is a duplicate, the rest go in, in order.
    second = (await ingest.handle(bulk_body(entries), BULK_HEADERS)).content
    assert [s["status"] for s in second["statuses"]] == ["SUCCESS"] * 3
    replay = await broker.replay("o", Position(broker.epoch, 0))
    assert [json.loads(r.data)["task"]["id"] for r in replay.records] == [1, 2]
    assert replay.revoked_before == 1000.0
    broker.fail = True
    single = await ingest.handle(cloudevent(revocation("o", 2000)), {})
    assert single.content == {"status": "RETRY"}


# -- streams end to end, memory backend, both stream paths --------------------------
@pytest.mark.usefixtures("stream_path")
async def test_a_sign_out_ends_the_users_older_streams_and_refuses_their_tokens(
        start_service, open_stream) -> None:
    svc = start_service()
    user, other = uid(), uid()
    now = int(time.time())
    old = token_issued(user, now - 100)
    no_iat = token_issued(user, None)
    newer = token_issued(user, now - 5)
    streams = [await open_stream(svc, token=old), await open_stream(svc, token=old),
               await open_stream(svc, token=no_iat)]
    kept = await open_stream(svc, token=newer)
    bystander = await open_stream(svc, token=svc.token(other))

    assert dapr_reply(svc, revocation(user, now - 5)) == "SUCCESS"
    for stream in streams:
        await closed_as_revoked(stream)
    assert await refused(open_stream, svc, old) == "token revoked"
    assert await refused(open_stream, svc, no_iat) == "token revoked"
    # A token issued at or after not_before (a new login) and other users are untouched.
    fresh = await open_stream(svc, token=newer)
    svc.publish(user, 1)
    svc.publish(other, 2)
    assert await kept.tasks(1) == [1]
    assert await fresh.tasks(1) == [1]
    assert await bystander.tasks(1) == [2]
    assert not kept.ended.is_set() and not bystander.ended.is_set()


async def test_a_malformed_sign_out_is_dropped_and_ends_nothing(
        start_service, open_stream) -> None:
    svc = start_service()
    user = uid()
    stream = await open_stream(svc, token=token_issued(user, int(time.time()) - 100))
    ahead = time.time() + 2 * 86_400
    for not_before in ("now", None, True, -1, ahead, 10**400, [1], {"t": 1}):
        assert dapr_reply(svc, revocation(user, not_before)) == "DROP", not_before
    # 1e400 decodes to infinity.
    body = cloudevent(revocation(user, 0)).replace(b'"not_before":0', b'"not_before":1e400')
    assert svc.deliver(body).json()["status"] == "DROP"
    assert dapr_reply(svc, revocation("", time.time())) == "DROP"
    svc.publish(user, 1)
    assert await stream.tasks(1) == [1]
    logs = svc.logs()
    assert "not_before must be a number of unix seconds, not 'now'" in logs
    assert "is more than a day ahead" in logs


async def test_a_sign_out_in_a_bulk_delivery_gets_its_own_status_in_order(
        start_service, open_stream) -> None:
    svc = start_service()
    user = uid()
    stream = await open_stream(svc, token=token_issued(user, int(time.time()) - 100))
    entries = [
        bulk_entry("a", json.loads(cloudevent(task_event(user, 1))), None),
        bulk_entry("b", json.loads(cloudevent(revocation(user, int(time.time())))), None),
        bulk_entry("c", json.loads(cloudevent(revocation(user, "soon"))), None),
        bulk_entry("d", json.loads(cloudevent(task_event(user, 2))), None),
    ]
    reply = svc.deliver(bulk_body(entries), BULK_HEADERS)
    assert reply.status_code == 200, reply.text
    assert reply.json()["statuses"] == [
        {"entryId": "a", "status": "SUCCESS"}, {"entryId": "b", "status": "SUCCESS"},
        {"entryId": "c", "status": "DROP"}, {"entryId": "d", "status": "SUCCESS"}]
    # The task before the sign-out reached the stream, then the stream was closed.
    assert await stream.tasks(1) == [1]
    await closed_as_revoked(stream)


# -- the CLI ---------------------------------------------------------------------------
async def test_cli_revoke_signs_the_user_out(start_service, open_stream) -> None:
    svc = start_service()
    user = uid()
    token = token_issued(user, int(time.time()) - 100)
    stream = await open_stream(svc, token=token)
    result = await acli("revoke", "--user", user, "--url", svc.url)
    assert (result.returncode, result.stdout) == (0, "200 SUCCESS\n"), result.stderr
    await closed_as_revoked(stream)
    assert await refused(open_stream, svc, token) == "token revoked"
    # A login after the sign-out works.
    await open_stream(svc, token=token_issued(user, int(time.time())))


async def test_cli_revoke_with_not_before(start_service, open_stream) -> None:
    svc = start_service()
    user = uid()
    now = int(time.time())
    before, after = token_issued(user, now - 100), token_issued(user, now - 50)
    result = await acli("revoke", "--user", user, "--not-before", str(now - 60),
                        "--url", svc.url)
    assert (result.returncode, result.stdout) == (0, "200 SUCCESS\n"), result.stderr
    assert await refused(open_stream, svc, before) == "token revoked"
    await open_stream(svc, token=after)
    bad = await acli("revoke", "--user", user, "--not-before", "nan", "--url", svc.url)
    assert bad.returncode == 2 and "--not-before" in bad.stderr


# -- replicas on one Redis -------------------------------------------------------------
async def test_a_sign_out_on_one_replica_ends_streams_on_another_and_outlives_a_restart(
        redis_server, start_service, open_stream) -> None:
    server = redis_server()
    a = start_service(backend="redis", redis_url=server.url)
    b = start_service(backend="redis", redis_url=server.url)
    user, other = uid(), uid()
    now = int(time.time())
    old, newer = token_issued(user, now - 100), token_issued(user, now - 5)
    on_b = await open_stream(b, token=old)
    kept_on_b = await open_stream(b, token=newer)
    other_on_b = await open_stream(b, token=b.token(other))
    assert dapr_reply(a, revocation(user, now - 5)) == "SUCCESS"
    await closed_as_revoked(on_b)
    a.publish(user, 1)
    a.publish(other, 2)
    assert await kept_on_b.tasks(1) == [1]
    assert await other_on_b.tasks(1) == [2]

    port = b.port
    b.stop(signal.SIGKILL)
    restarted = start_service(port=port, backend="redis", redis_url=server.url)
    assert await refused(open_stream, restarted, old) == "token revoked"
    assert await refused(open_stream, a, old) == "token revoked"
    await open_stream(restarted, token=newer)


class _Sink:
    def __init__(self) -> None:
        self.heard: list[tuple[str, float]] = []
        self.resumes = 0

    def deliver(self, record: Any) -> None:
        pass

    def resumed(self) -> None:
        self.resumes += 1

    def revoked(self, user_id: str, not_before: float) -> None:
        self.heard.append((user_id, not_before))


async def test_a_sign_out_announced_while_pubsub_is_down_is_read_on_reconnect(
        redis_server) -> None:
    server = redis_server()
    a = RedisBroker(Settings(backend="redis", redis_url=server.url))
    b = RedisBroker(Settings(backend="redis", redis_url=server.url))
    sink = _Sink()
    try:
        await a.start(_Sink())
        await b.start(sink)
        await b.subscribe("u")
        # Server side, the subscription is gone once this returns: the
        # announcement below cannot reach b live.
        assert server.command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await a.revoke("u", 1000.0, 60)
        await aeventually(lambda: sink.heard, 10, message="the sign-out was never heard")
        assert sink.heard == [("u", 1000.0)]
        assert sink.resumes >= 1
    finally:
        await a.close()
        await b.close()
