"""The demo's helpers: off by default, and when on, for local clients only.

``POST /demo/publish`` sends a task event for the user of the token it
carries, through the ingest a Dapr delivery meets; its events are read here
on real streams.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest

from sse_service.demo import is_loopback, names_loopback
from support import SECRET, Service, make_token, running_service

pytestmark = pytest.mark.timeout(30)

MINTING = ["/demo/token", "/demo/session"]
#: Every endpoint behind the local-clients-only guard.
GUARDED = [*MINTING, "/demo/publish"]
# What a proxy on the same host adds; every value claims a local client.
FORWARDING = {
    "x-forwarded-for": "127.0.0.1",
    "forwarded": "for=127.0.0.1",
    "x-real-ip": "127.0.0.1",
    "x-forwarded-host": "127.0.0.1:8005",
    "x-forwarded-proto": "http",
    "x_forwarded_for": "127.0.0.1",
    "X-Forwarded-For": "::1",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("demo"), demo_page=True) as svc:
        yield svc


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Demo on, with uvicorn told to believe X-Forwarded-For from anyone."""
    with running_service(tmp_path_factory.mktemp("trusting"), demo_page=True,
                         FORWARDED_ALLOW_IPS="*") as svc:
        yield svc


def assert_refused(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 403, reply.text
    assert reply.headers["content-type"] == "application/json"
    detail = reply.json()["detail"]
    assert "answer local clients only" in detail and reason in detail, detail
    assert "set-cookie" not in reply.headers
    assert "token" not in reply.json()


def guarded_request(service: Service, path: str, headers: dict[str, str] | None = None,
                    client: httpx.Client | None = None) -> httpx.Response:
    """A request that each guarded endpoint accepts from a local client."""
    body: dict[str, object] = {"user": "42"}
    sent = dict(headers or {})
    if path == "/demo/publish":
        body = {"event": "task.created", "task": {"id": 1}}
        sent["authorization"] = f"Bearer {make_token('42')}"
    if client is None:
        return httpx.post(f"{service.url}{path}", json=body, headers=sent, timeout=10)
    return client.post(f"{service.url}{path}", json=body, headers=sent)


def test_demo_routes_are_off_by_default(start_service):
    service = start_service()
    for method, path in [("GET", "/"), ("POST", "/demo/token"), ("POST", "/demo/session"),
                         ("DELETE", "/demo/session"), ("POST", "/demo/publish")]:
        reply = httpx.request(method, f"{service.url}{path}", json={"user": "42"})
        assert reply.status_code == 404, (path, reply.status_code)


def test_local_client_gets_a_dev_token(demo):
    reply = httpx.post(f"{demo.url}/demo/token", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    claims = jwt.decode(reply.json()["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"


def test_local_client_gets_a_session_cookie(demo):
    reply = httpx.post(f"{demo.url}/demo/session", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    assert reply.headers["set-cookie"].startswith("sse_token=")


@pytest.mark.parametrize("path", GUARDED)
def test_a_local_client_passes_the_guard(demo, path):
    reply = guarded_request(demo, path)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize(("header", "value"), FORWARDING.items(), ids=list(FORWARDING))
def test_a_request_with_a_forwarding_header_is_refused(demo, path, header, value):
    assert_refused(guarded_request(demo, path, headers={header: value}), "came through a proxy")


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize("claimed", ["127.evil.example", "127.0.0.1", "203.0.113.9"])
def test_forwarded_for_is_refused_even_when_uvicorn_trusts_it(trusting, path, claimed):
    # With FORWARDED_ALLOW_IPS=* uvicorn replaces the peer address with the
    # header's claim ("127.evil.example" started with "127.").
    reply = guarded_request(trusting, path, headers={"x-forwarded-for": claimed})
    assert_refused(reply, "came through a proxy")


def non_loopback_address() -> str:
    """An address of this machine outside 127.0.0.0/8 (the one its default route uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: it only picks a route
        except OSError:
            pytest.skip("this machine has no route off loopback")
        address = str(probe.getsockname()[0])
    if is_loopback(address):
        pytest.skip("this machine has no address outside loopback")
    return address


@pytest.mark.parametrize("path", GUARDED)
def test_a_peer_outside_loopback_is_refused(demo, path):
    # The service listens on 127.0.0.1; Linux lets a socket bound to another
    # address of this machine connect to it, and the peer is that address.
    address = non_loopback_address()
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=10) as client:
        reply = guarded_request(demo, path, client=client)
    assert_refused(reply, "the peer address is not a loopback address")
    demo.wait_for_log(f'{address}:')


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8005", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "[::1", ""])
def test_a_host_header_naming_another_site_is_refused(demo, path, host):
    # DNS rebinding: a page on evil.example points its name at 127.0.0.1, and
    # its requests then come from this machine's browser, with its own name.
    reply = guarded_request(demo, path, headers={"host": host})
    assert_refused(reply, "the Host header names no loopback address")


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "app.localhost:{port}",
                                  "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"])
def test_a_host_header_naming_this_machine_is_accepted(demo, host):
    reply = guarded_request(demo, "/demo/token", headers={"host": host.format(port=demo.port)})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("path", GUARDED)
def test_refused_before_the_body_is_validated(demo, path):
    # No hint about what a valid request would look like.
    reply = httpx.post(f"{demo.url}{path}", json={"user": "", "ttl": 10**9},
                       headers={"x-forwarded-for": "127.0.0.1"})
    assert_refused(reply, "came through a proxy")


def test_any_loopback_peer_counts_as_local(demo):
    # 127.0.0.6 is where an Istio-style sidecar connects from: a loopback
    # address like any other, which is why the demo stays off beside one.
    transport = httpx.HTTPTransport(local_address="127.0.0.6")
    with httpx.Client(transport=transport, timeout=10) as client:
        reply = client.post(f"{demo.url}/demo/token", json={"user": "42", "ttl": 60})
    assert reply.status_code == 200, reply.text
    demo.wait_for_log('127.0.0.6:')


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.6", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:127.0.0.6", True),
        ("localhost", False),
        ("127.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),
        ("128.0.0.1", False),
        ("", False),
        (" 127.0.0.1", False),
    ],
)
def test_is_loopback_accepts_loopback_addresses_only(host, local):
    assert is_loopback(host) is local


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1:8005", True),
        ("127.0.0.6", True),
        ("[::1]:8005", True),
        ("[::ffff:127.0.0.1]", True),
        ("localhost:8005", True),
        ("tasks.localhost:8005", True),
        ("LocalHost", True),
        ("evil.example", False),
        ("localhost.evil.example:8005", False),
        ("127.0.0.1.nip.io:8005", False),
        ("[::1", False),
        ("::1", False),
        ("[fe80::1]:8005", False),
        ("0.0.0.0:8005", False),
        ("", False),
    ],
)
def test_names_loopback_accepts_this_machine_only(host, local):
    assert names_loopback(host) is local


# -- POST /demo/publish ----------------------------------------------------------------


def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def publish(service: Service, body: object, token: str | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{service.url}/demo/publish", content=content, headers=sent, timeout=10)


def task_update(event: str, task: dict[str, object]) -> dict[str, object]:
    return {"type": "task_update", "event": event, "task": task}


@pytest.mark.usefixtures("stream_path")
async def test_a_published_event_arrives_on_the_users_stream(start_service, open_stream):
    service = start_service(demo_page=True)
    uid, other = user(), user()
    mine = await open_stream(service, token=make_token(uid))
    theirs = await open_stream(service, token=make_token(other))
    reply = publish(service, {"event": "task.created",
                              "task": {"id": 1, "title": "Water the plants"}}, make_token(uid))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer == {"status": "SUCCESS", "user": uid,
                      "cloudevent_id": answer["cloudevent_id"]}
    uuid.UUID(answer["cloudevent_id"])
    event = await mine.next()
    assert json.loads(event.data) == task_update("task.created",
                                                 {"id": 1, "title": "Water the plants"})
    # Without a title the task is its id alone.
    for kind in ("task.completed", "task.deleted"):
        assert publish(service, {"event": kind, "task": {"id": 1}},
                       make_token(uid)).json()["status"] == "SUCCESS"
    assert [json.loads(e.data) for e in await mine.take(2)] == [
        task_update("task.completed", {"id": 1}), task_update("task.deleted", {"id": 1})]
    # The other user's stream got none of them: its first event is its own.
    assert publish(service, {"event": "task.created", "task": {"id": 9}},
                   make_token(other)).json()["user"] == other
    assert await theirs.tasks(1) == [9]


async def test_the_session_cookie_signs_a_publish_in(demo, open_stream):
    uid = user()
    stream = await open_stream(demo, token=make_token(uid))
    session = httpx.post(f"{demo.url}/demo/session", json={"user": uid, "ttl": 60})
    cookie = session.headers["set-cookie"].split(";")[0]
    assert cookie.startswith("sse_token="), cookie
    reply = publish(demo, {"event": "task.updated", "task": {"id": 4, "title": "b"}},
                    headers={"cookie": cookie})
    assert reply.json()["status"] == "SUCCESS" and reply.json()["user"] == uid, reply.text
    assert json.loads((await stream.next()).data) == task_update("task.updated",
                                                                 {"id": 4, "title": "b"})


OTHER_SECRET = "another-secret-0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("not-a-jwt", "malformed token"),
        (make_token("42", ttl=-60), "token expired"),
        (make_token("42", secret=OTHER_SECRET), "invalid signature"),
    ],
    ids=["missing", "malformed", "expired", "other-secret"],
)
def test_a_publish_without_a_valid_token_is_401(demo, token, reason):
    reply = publish(demo, {"event": "task.created", "task": {"id": 1}}, token)
    assert reply.status_code == 401, reply.text
    assert reply.json()["detail"] == reason
    assert reply.headers["www-authenticate"].startswith("Bearer")


JSON = "application/json"
BAD_BODIES = [
    # (name, body, content type, status, part of the reason)
    ("text-plain", {"event": "task.created", "task": {"id": 1}}, "text/plain", 415,
     "send the event as application/json"),
    ("form", b"event=task.created", "application/x-www-form-urlencoded", 415,
     "send the event as application/json"),
    ("not-json", b'{"event": ', JSON, 422, "Invalid JSON"),
    ("array", [1], JSON, 422, "Input should be an object"),
    ("unknown-event", {"event": "task.archived", "task": {"id": 1}}, JSON, 422,
     "event: must be one of task.completed, task.created, task.deleted, task.updated"),
    ("revocation", {"event": "session.revoked", "task": {"id": 1}}, JSON, 422,
     "event: must be one of"),
    ("no-task", {"event": "task.created"}, JSON, 422, "task: Field required"),
    ("task-array", {"event": "task.created", "task": [1]}, JSON, 422,
     "task: Input should be an object"),
    ("no-id", {"event": "task.created", "task": {"title": "a"}}, JSON, 422,
     "task.id: Field required"),
    ("string-id", {"event": "task.created", "task": {"id": "1"}}, JSON, 422,
     "task.id: Input should be a valid integer"),
    ("bool-id", {"event": "task.created", "task": {"id": True}}, JSON, 422,
     "task.id: Input should be a valid integer"),
    ("float-id", {"event": "task.created", "task": {"id": 1.5}}, JSON, 422,
     "task.id: Input should be a valid integer"),
    ("negative-id", {"event": "task.created", "task": {"id": -1}}, JSON, 422,
     "task.id: Input should be greater than or equal to 0"),
    ("unsafe-id", {"event": "task.created", "task": {"id": 2**53}}, JSON, 422,
     "task.id: Input should be less than or equal to 9007199254740991"),
    ("long-title", {"event": "task.created", "task": {"id": 1, "title": "x" * 201}}, JSON, 422,
     "task.title: String should have at most 200 characters"),
    ("number-title", {"event": "task.created", "task": {"id": 1, "title": 5}}, JSON, 422,
     "task.title: Input should be a valid string"),
    ("extra-task-field", {"event": "task.created", "task": {"id": 1, "owner": "x"}}, JSON, 422,
     "task.owner: Extra inputs are not permitted"),
    # The user is the token's: the body cannot name another.
    ("user-field", {"event": "task.created", "user": "someone-else", "task": {"id": 1}}, JSON,
     422, "user: Extra inputs are not permitted"),
    ("too-large", {"event": "task.created", "task": {"id": 1, "title": "x" * 5000}}, JSON, 413,
     "request body over 4096 bytes"),
]


async def test_a_bad_body_is_refused_with_its_reason_and_publishes_nothing(demo, open_stream):
    uid = user()
    token = make_token(uid)
    stream = await open_stream(demo, token=token)
    for name, body, content_type, status, reason in BAD_BODIES:
        reply = publish(demo, body, token, headers={"content-type": content_type})
        assert reply.status_code == status, (name, reply.text)
        assert reason in reply.json()["detail"], (name, reply.text)
    # Chunked, without a length: cut off at the bound all the same.
    chunks = iter([b'{"event": "task.created", "task": {"id": 1, "title": "', b"x" * 5000,
                   b'"}}'])
    reply = httpx.post(f"{demo.url}/demo/publish", content=chunks, timeout=10,
                       headers={"content-type": JSON, "authorization": f"Bearer {token}"})
    assert reply.status_code == 413, reply.text
    # One stream is ordered: had any of them published, it would come first.
    assert publish(demo, {"event": "task.created", "task": {"id": 7}},
                   token).json()["status"] == "SUCCESS"
    assert await stream.tasks(1) == [7]


async def test_an_event_the_ingest_drops_answers_drop_with_the_reason(start_service,
                                                                       open_stream):
    service = start_service(demo_page=True, max_event_bytes=256)
    uid = user()
    token = make_token(uid)
    stream = await open_stream(service, token=token)
    # Valid for the form, too large for SSE_MAX_EVENT_BYTES: the ingest decides.
    reply = publish(service, {"event": "task.created", "task": {"id": 1, "title": "x" * 200}},
                    token)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["status"] == "DROP", answer
    assert answer["reason"].startswith("event of "), answer
    assert answer["reason"].endswith(" bytes exceeds SSE_MAX_EVENT_BYTES=256"), answer
    # Logged as a dropped delivery from daprd is.
    service.wait_for_log(f"dropping CloudEvent {answer['cloudevent_id']}")
    assert publish(service, {"event": "task.created", "task": {"id": 2}},
                   token).json()["status"] == "SUCCESS"
    assert await stream.tasks(1) == [2]


async def test_publish_needs_no_app_token_and_the_dapr_route_still_does(start_service,
                                                                        open_stream):
    service = start_service(demo_page=True, APP_API_TOKEN="dapr-app-token")
    uid = user()
    stream = await open_stream(service, token=make_token(uid))
    reply = publish(service, {"event": "task.created", "task": {"id": 3}}, make_token(uid))
    assert reply.json()["status"] == "SUCCESS", reply.text
    assert await stream.tasks(1) == [3]
    assert service.deliver(b"{}").status_code == 401


@pytest.mark.parametrize("origins", ["", "http://app.localhost:5173"], ids=["no-cors", "cors"])
def test_no_other_origin_gets_past_the_preflight_of_a_publish(start_service, origins):
    # The JSON-only rule holds because a cross-origin JSON POST needs this
    # preflight first, and nothing here grants it.
    service = start_service(demo_page=True, cors_origins=origins)
    reply = httpx.options(f"{service.url}/demo/publish", headers={
        "origin": "http://app.localhost:5173", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, authorization"})
    assert reply.status_code >= 400, (reply.status_code, reply.headers)
    assert "POST" not in reply.headers.get("access-control-allow-methods", ""), reply.headers
