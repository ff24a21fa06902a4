"""One record, one log line: escaping, bounds and token masking, unit and end to end."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.logging import AccessFormatter

from sse_service.broker import Position, Record, Replay
from sse_service.connection import Connection
from sse_service.log_setup import (
    ACCESS_FORMAT,
    LoopFlushedHandler,
    TextLines,
    access_line,
    lighten_records,
    log_config,
)
from sse_service.logs import (
    MAX_ARG_CHARS,
    MAX_LOGGED_CHARS,
    MAX_MESSAGE_CHARS,
    SafeRecords,
    escape,
    install_filter,
    redact,
)
from sse_service.logs_json import JsonLines, trace_id
from support import (
    DAPR_HEADERS,
    NO_TRACE,
    SECRET,
    Service,
    cloudevent,
    free_port,
    make_token,
    wait_healthy,
)

pytestmark = pytest.mark.timeout(30)

# No comma: X-Forwarded-For lists split at commas.
FORGED = "1970-01-01 00:00:00 ERROR sse_service.auth: FORGED admin login"
# Every character str.splitlines() breaks a line at.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def one_line(text: str) -> bool:
    return len(text.splitlines()) <= 1 and not any(c in text for c in LINE_BREAKS)


# -- escape() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain text, é, ✓", "plain text, é, ✓"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x00\x1b[2J\x7f", "\\u0000\\u001b[2J\\u007f"),
        ("\x85\u2028\u2029", "\\u0085\\u2028\\u2029"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        # A literal backslash-n stays distinguishable from an escaped newline.
        ("a\\nb", "a\\\\nb"),
        (b"\r\n", "b'\\\\r\\\\n'"),
        (None, "None"),
    ],
)
def test_escape(value, shown):
    assert escape(value) == shown


def test_escape_cuts_long_values_and_says_how_long_they_were():
    assert escape("x" * 1000) == "x" * MAX_LOGGED_CHARS + "...(1000 chars)"
    assert escape("y" * MAX_LOGGED_CHARS) == "y" * MAX_LOGGED_CHARS
    assert escape("abcdef", limit=3) == "abc...(6 chars)"


@given(st.text())
def test_escape_is_always_one_bounded_encodable_line(text):
    shown = escape(text)
    assert one_line(shown)
    assert len(shown) <= 6 * MAX_LOGGED_CHARS + len(f"...({len(text)} chars)")
    shown.encode("utf-8")  # no lone surrogate left


# -- redact() -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "masked"),
    [
        ('/events?token="a.b.c"', "/events?token=***"),
        ("/events?token=;a.b.c", "/events?token=***"),
        ("/events?token=?a.b.c", "/events?token=***"),
        ("/events?token=%22a.b.c%22", "/events?token=***"),
        ("/events?token=a.b.c;x=1&n=2", "/events?token=***&n=2"),
        ("/events?access_token=a.b.c&n=1", "/events?access_token=***&n=1"),
        ("/events?token=a&token=a.b.c", "/events?token=***&token=***"),
        ("/events?tok%65n=a.b.c", "/events?tok%65n=***"),
        ("/events?Access_Token=a.b.c", "/events?Access_Token=***"),
        ("/events?n=1;token=a.b.c&m=2", "/events?n=1;token=***&m=2"),
        ("/events?n=token=a.b.c", "/events?n=token=a.b.c"),
        ("/events?token==a.b.c", "/events?token=***"),
        ("/events?token=", "/events?token=***"),
        ("/events?lastEventId=e-1", "/events?lastEventId=e-1"),
    ],
)
def test_redact_masks_the_whole_value(target, masked):
    assert redact(target) == masked


# -- the filter ---------------------------------------------------------------------------


def render(msg: object, *args: object, name: str = "sse_service.test",
           formatter: logging.Formatter | None = None) -> str:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args or None, None)
    assert SafeRecords().filter(record) is True
    return (formatter or logging.Formatter("%(levelname)s %(name)s: %(message)s")).format(record)


def test_a_crlf_in_an_argument_cannot_start_a_line():
    line = render("dropping CloudEvent %s: %s", f"evt-1\r\n{FORGED}", "bad task")
    assert one_line(line)
    assert line == f"WARNING sse_service.test: dropping CloudEvent evt-1\\r\\n{FORGED}: bad task"


def test_every_line_break_and_control_character_is_escaped():
    line = render("user %s", "a" + LINE_BREAKS + "\x00\x1b\t\ud800" + "b")
    assert one_line(line) and line.endswith("b")
    line.encode("utf-8")


def test_a_long_argument_is_cut():
    line = render("dropping CloudEvent %s: %s", "evt-1", "unknown event_type " + "e" * 10**6)
    assert len(line) < MAX_ARG_CHARS + 100
    assert line.endswith(f"eee...({10**6 + 19} chars)")


def test_what_a_call_site_escaped_passes_unchanged():
    worst = escape("\x01" * 10 * MAX_LOGGED_CHARS)
    assert len(worst) < MAX_ARG_CHARS
    assert render("user %s", worst) == f"WARNING sse_service.test: user {worst}"
    assert render("user %s", escape("a\\nb\r\n")) == "WARNING sse_service.test: user a\\\\nb\\r\\n"


def test_objects_and_messages_with_line_breaks_are_rewritten():
    assert render("failed: %s", ValueError(f"x\n{FORGED}")).endswith(f"failed: x\\n{FORGED}")
    assert render(f"raw\r\n{FORGED}") == f"WARNING sse_service.test: raw\\r\\n{FORGED}"
    assert render("%(user)s left", {"user": f"u\n{FORGED}"}).endswith(f"u\\n{FORGED} left")
    assert render(RuntimeError("one\ntwo")) == "WARNING sse_service.test: one\\ntwo"


def test_numbers_and_plain_text_keep_their_record():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d streams, %.1fs, %s",
                               (3, 1.5, "ok"), None)
    SafeRecords().filter(record)
    assert record.msg == "%d streams, %.1fs, %s" and record.args == (3, 1.5, "ok")


def test_tokens_in_arguments_and_messages_are_masked():
    token = make_token("42")
    assert token not in render("GET %s", f"/events?token=;{token}")
    assert token not in render(f"GET /events?token=?{token}")


def test_the_filter_is_idempotent():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "v %s", ("\n" * 5000,), None)
    SafeRecords().filter(record)
    once = record.getMessage()
    SafeRecords().filter(record)
    assert record.getMessage() == once and one_line(once)


def test_an_access_record_stays_one_line_for_the_access_formatter():
    formatter = AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s',
                                use_colors=False)
    token = make_token("42")
    line = render('%s - "%s %s HTTP/%s" %d', f"1.2.3.4\x85{FORGED}:0", "GET",
                  f"/events?token=;{token}", "1.1", 401, name="uvicorn.access",
                  formatter=formatter)
    assert one_line(line) and token not in line
    assert line == f'1.2.3.4\\u0085{FORGED}:0 "GET /events?token=*** HTTP/1.1" 401 Unauthorized'


@given(st.lists(st.text(), max_size=3))
def test_the_filtered_message_is_always_one_line(values):
    line = render(" ".join(["%s"] * len(values)) or "nothing", *values)
    assert one_line(line)
    line.encode("utf-8")


def test_log_config_filters_both_handlers():
    config = log_config("info")
    (name,) = config["filters"]
    assert config["filters"][name]["()"] is SafeRecords
    for handler in config["handlers"].values():
        assert handler["filters"] == [name]


def test_install_filter_puts_the_filter_on_each_handler_once():
    logger = logging.getLogger(f"plain.{uuid.uuid4().hex}")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    touched = [*logging.getLogger().handlers, logging.lastResort, handler]
    before = {id(h): list(h.filters) for h in touched if h is not None}
    try:
        install_filter(logger.name)
        install_filter(logger.name)
        assert sum(isinstance(f, SafeRecords) for f in handler.filters) == 1
        for other in logging.getLogger().handlers:
            assert sum(isinstance(f, SafeRecords) for f in other.filters) == 1
    finally:
        for h in touched:
            if h is not None:
                h.filters[:] = before[id(h)]
        logger.removeHandler(handler)


# -- end to end: a real service's log ---------------------------------------------------


def raw_request(port: int, target: bytes, headers: bytes = b"") -> bytes:
    """Send one request exactly as given; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nhost: localhost\r\n" + headers
                     + b"connection: close\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def marker(service: Service) -> None:
    """Every earlier request is in the access log once this one is."""
    done = uuid.uuid4().hex
    assert raw_request(service.port, f"/healthz?done={done}".encode()) == b"HTTP/1.1 200 OK"
    service.wait_for_log(done)


def assert_not_forged(logs: str) -> None:
    assert "FORGED" in logs, "the attempt never reached the log"
    for line in logs.splitlines():
        assert not line.startswith(("1970-01-01", "FORGED")), line
    assert not any(c in logs for c in "\r\x85\u2028\u2029"), "a raw line break in the log"


def test_the_access_log_cannot_be_forged(start_service):
    service = start_service()
    forged = FORGED.encode()
    attempts = [
        (b"/healthz?x=%0d%0a" + forged.replace(b" ", b"%20"), b""),
        (b"/he%0d%0althz%0d%0a" + forged.replace(b" ", b"%20"), b""),
        (b"/healthz?x=\x85" + forged.replace(b" ", b"+"), b""),
        (b"/healthz", b"x-forwarded-for: 1.2.3.4\x85" + forged + b"\r\n"),
        (b"/healthz", b"x-forwarded-for: 1.2.3.4\xe2\x80\xa8" + forged + b"\r\n"),
    ]
    for target, headers in attempts:
        raw_request(service.port, target, headers)
    marker(service)
    assert_not_forged(service.logs())


def test_a_cloudevent_id_cannot_forge_a_line_nor_a_huge_value_a_huge_line(start_service):
    service = start_service(max_event_bytes=4_000_000)
    bad = {"event_type": "task.created", "user_id": "42", "task": [1]}
    reply = service.deliver(cloudevent(bad, event_id=f"evt-1\r\n{FORGED}"))
    assert reply.json()["status"] == "DROP"
    big = uuid.uuid4().hex
    huge = {"event_type": "e" * 1_000_000, "user_id": "42", "task": {}}
    reply = service.deliver(cloudevent(huge, event_id=big))
    assert reply.json()["status"] == "DROP"
    service.wait_for_log(big)
    logs = service.logs()
    assert_not_forged(logs)
    assert max(len(line) for line in logs.splitlines()) < 8 * MAX_ARG_CHARS


MANGLED = [
    b'/events?token="{jwt}"',
    b"/events?token=;{jwt}",
    b"/events?token=?{jwt}",
    b"/events?token=%22{jwt}%22",
    b"/events?access_token={jwt}",
    b"/events?token=a&token={jwt}",
    b"/events?tok%65n={jwt}",
    b"/events?n=1;token={jwt};x&m=2",
]


def assert_masked(service: Service, jwt: str) -> None:
    for target in MANGLED:
        status = raw_request(service.port, target.replace(b"{jwt}", jwt.encode()))
        assert status == b"HTTP/1.1 401 Unauthorized", (target, status)
    marker(service)
    logs = service.logs()
    assert logs.count("=***") >= len(MANGLED)
    for secret in (jwt, jwt.split(".")[1], jwt.split(".")[2]):
        assert secret not in logs


def test_mangled_query_tokens_are_masked_in_the_access_log(start_service):
    service = start_service()
    # Signed with another key, so every spelling is refused, and the same shape.
    assert_masked(service, make_token("42", secret="another-secret-" + "k" * 32))


@pytest.fixture
def plain_uvicorn(tmp_path: Path) -> Iterator[Service]:
    """The app under plain ``uvicorn --factory``, with uvicorn's own log set-up."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}
    env.update({"SSE_JWT_SECRET": SECRET, "SSE_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    log = Path(tempfile.mkstemp(prefix="uvicorn-", suffix=".log", dir=tmp_path)[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "sse_service.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--no-use-colors"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", port, process, log, env)
    try:
        wait_healthy(service.url, process, log)
        yield service
    finally:
        service.stop(signal.SIGKILL)


def test_plain_uvicorn_masks_and_escapes_its_access_log(plain_uvicorn):
    assert_masked(plain_uvicorn, make_token("42", secret="another-secret-" + "k" * 32))
    raw_request(plain_uvicorn.port, b"/healthz", b"x-forwarded-for: 1.2.3.4\x85" + FORGED.encode()
                + b"\r\n")
    marker(plain_uvicorn)
    assert_not_forged(plain_uvicorn.logs())


# -- JSON lines ---------------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def strict_json(line: str) -> dict[str, Any]:
    """One JSON object as a strict parser reads it: no NaN or Infinity, valid UTF-8,
    no lone surrogate even as an escape."""
    assert one_line(line), line[:300]
    line.encode("utf-8")

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    document = json.loads(line, parse_constant=refuse)
    assert isinstance(document, dict)
    json.dumps(document, ensure_ascii=False).encode("utf-8")
    return document


def json_record(msg: object, *args: object, name: str = "sse_service.test",
                exc_info: bool = False, **extra: object) -> tuple[str, dict[str, Any]]:
    """Log one record through the handler set-up of ``SSE_LOG_FORMAT=json``."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SafeRecords())
    handler.setFormatter(JsonLines())
    logger = logging.getLogger(name)
    saved = (logger.propagate, logger.level)
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        logger.warning(msg, *args, extra=extra or None, exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), text[:300]
    return text[:-1], strict_json(text[:-1])


def test_a_json_line_has_time_level_logger_message_and_fields():
    _, doc = json_record("dropping CloudEvent %s: %s", "evt-1", "bad task",
                         cloudevent_id="evt-1", dapr_status="DROP", count=3, ratio=0.5)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc.pop("time"))
    assert doc == {"level": "WARNING", "logger": "sse_service.test",
                   "message": "dropping CloudEvent evt-1: bad task",
                   "cloudevent_id": "evt-1", "dapr_status": "DROP", "count": 3, "ratio": 0.5}


def test_the_json_access_record_has_its_fields_and_no_token():
    token = make_token("42")
    line, doc = json_record('%s - "%s %s HTTP/%s" %d', f"1.2.3.4\x85{FORGED}:0", "GET",
                            f"/events?token=;{token}&n=1", "1.1", 401, name="uvicorn.access")
    assert token not in line
    assert {k: doc[k] for k in ("client", "method", "path", "http_version", "status")} == {
        "client": f"1.2.3.4\\u0085{FORGED}:0", "method": "GET", "path": "/events?token=***&n=1",
        "http_version": "1.1", "status": 401}
    assert doc["message"] == f'1.2.3.4\\u0085{FORGED}:0 - "GET /events?token=***&n=1 HTTP/1.1" 401'


def test_a_json_field_cannot_start_a_line_nor_make_a_huge_one():
    line, doc = json_record("dropping CloudEvent %s", "x", cloudevent_id=f"evt-1\r\n{FORGED}",
                            reason="e" * 10**6, path="/events?token=a.b.c")
    assert doc["cloudevent_id"] == f"evt-1\\r\\n{FORGED}"
    assert doc["reason"].endswith(f"eee...({10**6} chars)")
    assert doc["path"] == "/events?token=***"
    assert len(line) < 2 * MAX_ARG_CHARS


def test_json_lines_stay_utf8_with_lone_surrogates_and_line_separators():
    try:
        raise ValueError("bad \ud800 \u2028 \x85 value")
    except ValueError:
        line, doc = json_record("user %s \udfff", "a\ud800b", exc_info=True, user_id="\udc00\u2029")
    assert doc["message"] == "user a\\ud800b \\udfff"
    assert doc["user_id"] == "\\udc00\\u2029"
    assert doc["exc_info"].endswith("ValueError: bad \\ud800 \\u2028 \\u0085 value")


def test_json_numbers_stay_numbers_and_never_become_nan():
    _, doc = json_record("n", small=-7, flag=True, nothing=None, nan=float("nan"),
                         inf=float("-inf"), huge=10**5000, thing=ValueError("x\ny"))
    assert (doc["small"], doc["flag"], doc["nothing"]) == (-7, True, None)
    assert (doc["nan"], doc["inf"]) == ("nan", "-inf")
    assert doc["huge"] == "(16610-bit int)"
    assert doc["thing"] == "x\\ny"


@given(st.text(), st.text(), st.text())
def test_every_json_line_parses_and_is_bounded(arg, field, msg):
    line, doc = json_record(msg.replace("%", "") + " %s", arg, user_id=field)
    assert len(line) < 3 * MAX_MESSAGE_CHARS
    assert one_line(doc["user_id"]) and one_line(doc["message"])


@pytest.mark.parametrize(
    ("traceparent", "trace"),
    [
        (TRACEPARENT, TRACE),
        (TRACEPARENT[:-2] + "00", TRACE),
        (NO_TRACE, None),
        (f"00-{TRACE}-0000000000000000-01", None),
        (TRACEPARENT.upper(), None),
        (f"01-{TRACE}-00f067aa0ba902b7-01", None),
        (TRACEPARENT + "-00", None),
        (TRACEPARENT[:-1], None),
        (f"00-{TRACE}\r\n-00f067aa0ba902-01", None),
        ("00-" + "a" * 10**6, None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_trace_id_reads_only_a_valid_w3c_traceparent(traceparent, trace):
    assert trace_id(traceparent) == trace


def test_the_slow_consumer_warning_names_its_stream(caplog):
    conn = Connection(f"u\r\n{FORGED}", None, 1, 0.0, after=Position("e1", 0))
    conn.start(Replay(Position("e1", 0), []))
    with caplog.at_level(logging.WARNING, logger="sse_service.connection"):
        for offset in (1, 2):
            record = Record(conn.user_id, "e1", offset, b"{}")
            conn.offer(record, b"id: e1-%d\ndata: {}\n\n" % offset)
    (warning,) = [r for r in caplog.records if r.name == "sse_service.connection"]
    assert SafeRecords().filter(warning)
    doc = strict_json(JsonLines().format(warning))
    assert (doc["reason"], doc["user_id"]) == ("slow_consumer", f"u\\r\\n{FORGED}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_config_filters_both_handlers_in_both_formats(fmt):
    config = log_config("info", fmt)
    for handler in config["handlers"].values():
        assert handler["filters"] == ["safe"]
    formatters = {f.get("()") for f in config["formatters"].values()}
    assert (JsonLines in formatters) == (fmt == "json")


# -- end to end: a real service's JSON log ----------------------------------------------


def json_log(service: Service) -> list[dict[str, Any]]:
    """Every line of the service's output, each one a JSON object."""
    lines = service.logs().splitlines()
    assert lines
    for line in lines:
        assert len(line) < 8 * MAX_ARG_CHARS, line[:300]
    return [strict_json(line) for line in lines]


def test_the_json_service_log_has_access_fields_and_masks_tokens(start_service):
    service = start_service(log_format="json")
    secret = uuid.uuid4().hex
    assert raw_request(service.port, f"/healthz?token={secret}&x=1".encode()) \
        == b"HTTP/1.1 200 OK"
    assert_masked(service, make_token("42", secret="another-secret-" + "k" * 32))
    raw_request(service.port, b"/healthz?x=%0d%0a" + FORGED.replace(" ", "%20").encode())
    raw_request(service.port, b"/healthz", b"x-forwarded-for: 1.2.3.4\x85" + FORGED.encode()
                + b"\r\n")
    marker(service)
    logs = service.logs()
    assert secret not in logs
    assert_not_forged(logs)
    records = json_log(service)
    (access,) = [r for r in records if r.get("path") == "/healthz?token=***&x=1"]
    assert access["client"].startswith("127.0.0.1:")
    assert (access["level"], access["logger"], access["method"], access["http_version"],
            access["status"]) == ("INFO", "uvicorn.access", "GET", "1.1", 200)
    assert [r for r in records if r.get("status") == 401 and r["path"].startswith("/events?")]


def test_the_json_service_log_has_drop_fields_with_the_trace(start_service):
    service = start_service(log_format="json", max_event_bytes=256)
    traced = {**DAPR_HEADERS, "traceparent": TRACEPARENT}
    big = {"event_type": "task.created", "user_id": "42", "task": {"title": "t" * 300}}
    reply = service.deliver(cloudevent(big, event_id="evt-big"), traced)
    assert reply.json()["status"] == "DROP"
    forged = {"event_type": "task.created", "user_id": "42", "task": [1]}
    reply = service.deliver(cloudevent(forged, event_id=f"evt-1\r\n{FORGED}"))
    assert reply.json()["status"] == "DROP"
    huge = {"event_type": "e" * 1_000_000, "user_id": "42", "task": {}}
    reply = service.deliver(cloudevent(huge, event_id="evt-huge"),
                            {**DAPR_HEADERS, "traceparent": TRACEPARENT.upper()})
    assert reply.json()["status"] == "DROP"
    # A bulk entry's trace is its CloudEvent's: daprd sends no header per entry.
    event = json.loads(cloudevent(forged, event_id="evt-bulk", traceparent=TRACEPARENT))
    bulk = {"entries": [{"entryId": "0", "event": event, "metadata": {"__key": "k"},
                         "contentType": "application/cloudevents+json"}],
            "id": "b-1", "metadata": {"pubsubName": "taskpubsub"}, "pubsubname": "taskpubsub",
            "topic": "task-updates", "type": "com.dapr.event.sent.bulk"}
    reply = service.deliver(json.dumps(bulk).encode(),
                            {**DAPR_HEADERS, "content-type": "application/json"})
    assert reply.json()["statuses"] == [{"entryId": "0", "status": "DROP"}]
    service.wait_for_log('"evt-bulk"')
    assert_not_forged(service.logs())
    drops = {r["cloudevent_id"]: r for r in json_log(service) if "cloudevent_id" in r}
    first = drops["evt-big"]
    assert (first["level"], first["logger"], first["dapr_status"], first["trace_id"],
            first["user_id"]) == ("WARNING", "sse_service.ingest", "DROP", TRACE, "42")
    assert "SSE_MAX_EVENT_BYTES=256" in first["reason"]
    assert first["message"].startswith("dropping CloudEvent evt-big: event of ")
    (forged_id,) = [k for k in drops if k.startswith("evt-1")]
    assert forged_id == escape(f"evt-1\r\n{FORGED}", 64)  # the id as the message shows it
    assert (drops[forged_id]["trace_id"], drops[forged_id]["user_id"]) == (None, None)
    assert drops["evt-huge"]["trace_id"] is None
    assert drops["evt-huge"]["reason"].endswith("chars)")
    assert drops["evt-bulk"]["trace_id"] == TRACE


@pytest.mark.parametrize("status", [200, 401, 404, 429, 503, 299])
def test_the_text_access_line_is_uvicorns_own(status):
    # Our formatter renders the access line without copying the record; it must
    # render exactly what uvicorn's AccessFormatter does.
    from uvicorn.logging import AccessFormatter


    fmt = '%(asctime)s INFO access: %(client_addr)s "%(request_line)s" %(status_code)s'
    args = ("127.0.0.1:5555", "GET", "/events?lastEventId=e-1", "1.1", status)

    def record() -> logging.LogRecord:
        made = logging.LogRecord("uvicorn.access", logging.INFO, "f", 1,
                                 '%s - "%s %s HTTP/%s" %d', args, None)
        made.created, made.msecs = 1_796_000_000.25, 250.0
        return made

    assert TextLines(fmt).format(record()) == AccessFormatter(fmt, use_colors=False).format(
        record())


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def _counting_handler() -> tuple[logging.Logger, _CountingStream]:
    stream = _CountingStream()
    handler = LoopFlushedHandler(stream)
    logger = logging.getLogger(f"test.loopflushed.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_in_a_running_loop_the_lines_of_one_turn_leave_in_one_flush_at_its_end() -> None:
    logger, stream = _counting_handler()

    async def turn() -> None:
        for i in range(100):
            logger.info("line %d", i)
        assert stream.flushes == 0 and stream.flushed == ""
        await asyncio.sleep(0)  # the next turn of the loop
        assert stream.flushes == 1
        assert stream.flushed.splitlines() == [f"line {i}" for i in range(100)]
        logger.info("later")
        await asyncio.sleep(0)
        assert stream.flushes == 2 and stream.flushed.endswith("later\n")

    asyncio.run(turn())


def test_outside_a_loop_and_after_one_stopped_every_line_is_flushed_at_once() -> None:
    logger, stream = _counting_handler()
    logger.info("before")
    assert stream.flushes == 1

    async def log_and_stop() -> None:
        logger.info("in a loop that stops before its next turn")

    asyncio.run(log_and_stop())
    logger.info("after")
    assert stream.flushed.endswith("after\n")


def test_light_records_carry_no_call_site_thread_or_process_and_both_formats_still_render(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored afterwards
    lighten_records()
    logger, stream = _counting_handler()
    record = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, "%s", ("x",), None)
    assert (record.thread, record.process, record.processName) == (None, None, None)
    logger.info("where from")
    assert stream.flushed == "where from\n"
    seen: list[logging.LogRecord] = []
    logger.addFilter(lambda r: seen.append(r) or True)  # type: ignore[func-returns-value]
    logger.info("called here")
    assert (seen[0].funcName, seen[0].lineno) == ("(unknown function)", 0)
    assert json.loads(JsonLines().format(seen[0]))["message"] == "called here"


@pytest.mark.parametrize("status", [200, 401, 599])
def test_an_access_line_written_out_is_the_access_format_rendered(status: object) -> None:
    args = ("127.0.0.1:5555", "GET", "/events?lastEventId=abc", "1.1", status)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d', args, None)
    # The same format, spelled so the general path renders it.
    general = TextLines(ACCESS_FORMAT.replace(" INFO ", " %(levelname)s "))
    assert TextLines(ACCESS_FORMAT).format(record) == general.format(record)
    assert '"GET /events?lastEventId=abc HTTP/1.1"' in general.format(record)


@pytest.fixture
def access_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """uvicorn's access logger set up as log_config sets it up for text, into a buffer."""
    logger = logging.getLogger("uvicorn.access")
    saved = logger.handlers, logger.filters, logger.propagate, logger.level
    out = io.StringIO()
    handler = LoopFlushedHandler(out)
    handler.setFormatter(TextLines(ACCESS_FORMAT))
    handler.addFilter(SafeRecords())
    logger.handlers, logger.filters, logger.propagate = [handler], [], False
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.handlers, logger.filters, logger.propagate, logger.level = saved


_NASTY_TARGETS = [
    "/events",
    "/events?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl&lastEventId=ab-1",
    "/events?x=1\r\n2026-01-01 00:00:00,000 INFO access: forged",
    "/events?" + "a" * 5000,
]


@pytest.mark.parametrize("target", _NASTY_TARGETS, ids=["plain", "token", "crlf", "long"])
def test_the_direct_access_line_is_the_line_a_record_would_give(access_logger, target):
    logger, out = access_logger
    access_line(logger, "127.0.0.1:5000", "GET", target, "1.1", 401)
    direct = out.getvalue()
    out.seek(0), out.truncate()
    # A filter of the logger's own sends the line the way of a record instead.
    logger.addFilter(lambda record: True)
    access_line(logger, "127.0.0.1:5000", "GET", target, "1.1", 401)
    via_record = out.getvalue()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert direct.count("\n") == via_record.count("\n") == 1
    assert stamp.match(direct) and stamp.sub("", direct) == stamp.sub("", via_record)
    assert stamp.sub("", direct).startswith('INFO access: 127.0.0.1:5000 "GET /events')
    assert "c2lnbmF0dXJl" not in direct and "forged\n" not in direct
    assert len(direct) < MAX_ARG_CHARS + 200


def test_any_other_access_set_up_gets_a_record(access_logger):
    logger, out = access_logger
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(collector)
    access_line(logger, "10.0.0.1:1", "GET", "/events", "1.1", 200)
    assert [r.args for r in records] == [("10.0.0.1:1", "GET", "/events", "1.1", 200)]
    assert '"GET /events HTTP/1.1" 200 OK' in out.getvalue()


class _WriteCountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_the_lines_of_one_turn_reach_a_write_through_stream_in_one_write() -> None:
    # PYTHONUNBUFFERED makes sys.stdout write through: a write there is a syscall.
    stream = _WriteCountingStream()
    logger = logging.getLogger(f"test.loopflushed.{id(stream)}")
    logger.propagate = False
    logger.addHandler(LoopFlushedHandler(stream))
    logger.setLevel(logging.INFO)

    async def turn() -> None:
        for i in range(100):
            logger.info("line %d", i)
        assert stream.writes == 0
        await asyncio.sleep(0)
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]

    asyncio.run(turn())
    logger.info("outside")
    assert stream.writes == 2 and stream.getvalue().endswith("line 99\noutside\n")


def test_a_line_still_waiting_when_its_loop_is_gone_is_written_at_exit() -> None:
    logger, stream = _counting_handler()
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        logger.info("waits")
        loop.stop()  # the loop ends with this turn: the write it scheduled never runs

    try:
        loop.call_soon(log_and_stop)
        loop.run_forever()
    finally:
        loop.close()
    assert stream.getvalue() == ""
    handler, = logger.handlers
    handler.flush()  # what logging.shutdown does at exit
    assert stream.flushed == "waits\n"
