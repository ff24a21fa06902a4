"""The SSE wire format (``sse_service.sse``) against the WHATWG HTML "Server-sent events" rules.

The decoder is checked on the specification's own example streams and on each
parsing rule (line endings, BOM, comments, field names, ``id``, ``retry``,
dispatch); the encoder is checked by decoding what it writes.  Where the two
should agree, the decoder is compared with httpx-sse's independent parser.
"""

from __future__ import annotations

import itertools
import json

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from sse_service.broker import Position
from sse_service.errors import CloseReason, ResyncReason
from sse_service.frames import KEEPALIVE, closing_frame, ready_frame, resync_frame
from sse_service.sse import (
    Decoder,
    ServerSentEvent,
    encode,
    encode_comment,
    encode_comment_line,
    encode_message,
    encode_retry,
)

pytestmark = pytest.mark.timeout(10)


def decode(*chunks: str) -> tuple[list[ServerSentEvent], Decoder]:
    decoder = Decoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder


def datas(*chunks: str) -> list[str]:
    return [event.data for event in decode(*chunks)[0]]


def every_split(text: str) -> list[list[str]]:
    """``text`` cut into two and three chunks at every position."""
    splits = [[text]]
    for i in range(len(text) + 1):
        splits.append([text[:i], text[i:]])
    for i, j in itertools.combinations(range(len(text) + 1), 2):
        splits.append([text[:i], text[i:j], text[j:]])
    return splits


# -- the specification's example streams ---------------------------------------


def test_spec_stock_example_joins_data_lines_with_line_feeds():
    events, _ = decode("data: YHOO\ndata: +2\ndata: 10\n\n")
    assert events == [ServerSentEvent(data="YHOO\n+2\n10")]


def test_spec_comment_example_ids_and_single_space_stripping():
    stream = (
        ": test stream\n"
        "\n"
        "data: first event\n"
        "id: 1\n"
        "\n"
        "data:second event\n"
        "id\n"
        "\n"
        "data:  third event\n"
        "\n"
    )
    events, decoder = decode(stream)
    assert [(e.data, e.id) for e in events] == [
        ("first event", "1"),
        ("second event", ""),  # a bare "id" line resets the last event id
        (" third event", ""),  # only one leading space is removed
    ]
    assert decoder.last_event_id == ""


def test_spec_test_stream_empty_data_newline_data_and_unterminated_block():
    # "The first block fires events with the data set to the empty string, as
    # would the last block if it was followed by a blank line. The middle block
    # fires an event with the data set to a single newline character. The last
    # block is discarded because it is not followed by a blank line."
    events, _ = decode("data\n\ndata\ndata\n\ndata:")
    assert [e.data for e in events] == ["", "\n"]
    assert datas("data\n\ndata\ndata\n\ndata:\n\n") == ["", "\n", ""]


def test_spec_space_after_colon_is_optional():
    assert datas("data:test\n\ndata: test\n\n") == ["test", "test"]


def test_spec_event_field_sets_the_type_for_one_event_only():
    events, _ = decode("event: add\ndata: 73857293\n\ndata: 113411\n\n")
    assert [(e.event, e.data) for e in events] == [("add", "73857293"), ("message", "113411")]


# -- line endings, BOM, chunking ------------------------------------------------

STREAM = "id: 7\nevent: ping\ndata: a\ndata: b\n\ndata: c\n\n"
EXPECTED = [ServerSentEvent(data="a\nb", event="ping", id="7"),
            ServerSentEvent(data="c", id="7")]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending_gives_the_same_events(newline):
    events, decoder = decode(STREAM.replace("\n", newline))
    assert events == EXPECTED
    assert decoder.last_event_id == "7"


def test_mixed_line_endings_in_one_stream():
    assert datas("data: a\r\ndata: b\rdata: c\n\r\n") == ["a\nb\nc"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_any_chunking_gives_the_same_events(newline):
    text = STREAM.replace("\n", newline)
    for chunks in every_split(text):
        assert decode(*chunks)[0] == EXPECTED, chunks


def test_crlf_split_between_cr_and_lf_is_one_line_break():
    # Were the LF read as a second line break, the blank line would dispatch
    # "a" alone and "b" would become a separate event.
    assert datas("data: a\r", "\ndata: b\r", "\n\r", "\n") == ["a\nb"]


def test_an_empty_chunk_between_cr_and_lf_does_not_split_the_line_break():
    assert datas("data: a\r", "", "\ndata: b\r\n\r\n") == ["a\nb"]


def test_a_block_is_dispatched_only_once_its_blank_line_arrives():
    decoder = Decoder()
    assert decoder.feed("data: a\n") == []
    assert decoder.feed("data: b") == []
    assert decoder.feed("\n") == []
    assert decoder.feed("\n") == [ServerSentEvent(data="a\nb")]


def test_one_leading_bom_is_ignored():
    assert datas("\ufeffdata: x\n\n") == ["x"]


def test_a_bom_split_into_its_own_chunk_is_ignored():
    assert datas("\ufeff", "data: x\n\n") == ["x"]


def test_only_one_leading_bom_is_ignored():
    # The second BOM is part of the field name, "\ufeffdata", an unknown field.
    assert datas("\ufeff\ufeffdata: x\n\ndata: y\n\n") == ["y"]


def test_a_bom_later_in_the_stream_is_not_stripped():
    assert datas("data: x\n\n\ufeffdata: y\n\n") == ["x"]
    assert datas("data: \ufeffx\n\n") == ["\ufeffx"]


# -- fields ----------------------------------------------------------------------


def test_comments_are_ignored_anywhere_in_a_block():
    assert datas(":hello\ndata: a\n: in between\ndata: b\n:\n\n") == ["a\nb"]
    assert decode(": keepalive\n\n: another\n\n")[0] == []


def test_unknown_and_wrongly_cased_fields_are_ignored():
    assert decode("Data: x\nDATA: y\nfoo: bar\n\n")[0] == []
    assert datas("foo: bar\ndata: x\n\n") == ["x"]


def test_a_line_without_colon_is_a_field_name_with_empty_value():
    events, _ = decode("data\nevent\n\n")
    assert events == [ServerSentEvent(data="", event="message")]


def test_only_the_first_colon_separates_name_and_value():
    assert datas("data: a: b:c\n\n") == ["a: b:c"]
    assert datas("data::x\n\n") == [":x"]


def test_a_block_without_data_dispatches_nothing_and_resets_the_event_type():
    events, _ = decode("event: orphan\n\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x", event="message")]


def test_an_empty_event_name_means_message():
    assert decode("event:\ndata: x\n\n")[0] == [ServerSentEvent(data="x", event="message")]


def test_id_persists_until_the_server_changes_it():
    events, decoder = decode("id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n")
    assert [e.id for e in events] == ["1", "1", "2"]
    assert decoder.last_event_id == "2"


def test_an_id_only_block_moves_last_event_id_without_dispatching():
    events, decoder = decode("id: 5\n\n")
    assert events == []
    assert decoder.last_event_id == "5"
    assert decode("id: 5\n\ndata: x\n\n")[0] == [ServerSentEvent(data="x", id="5")]


def test_an_id_counts_only_once_its_block_is_dispatched():
    # The spec sets the event source's last event ID string when a block is
    # dispatched; a connection cut mid-block must not resume after an event
    # that was never delivered.
    decoder = Decoder()
    decoder.feed("id: 1\ndata: a\n\n")
    assert decoder.feed("id: 2\ndata: b\n") == []
    assert decoder.last_event_id == "1"
    assert decoder.feed("\n") == [ServerSentEvent(data="b", id="2")]
    assert decoder.last_event_id == "2"


def test_an_id_containing_nul_is_ignored():
    events, decoder = decode("id: 1\n\nid: a\0b\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x", id="1")]
    assert decoder.last_event_id == "1"


def test_an_empty_id_resets_last_event_id():
    events, decoder = decode("id: 1\ndata: a\n\nid:\ndata: b\n\n")
    assert [e.id for e in events] == ["1", ""]
    assert decoder.last_event_id == ""


def test_id_keeps_inner_and_trailing_spaces():
    assert decode("id:  a b \ndata: x\n\n")[0][0].id == " a b "


@pytest.mark.parametrize(
    "value",
    ["", " ", "-1", "+5", "1.5", "1e3", "10ms", "  10", "10 ", "abc", "\u0661\u0662"],
    ids=repr,
)
def test_retry_that_is_not_only_ascii_digits_is_ignored(value):
    _, decoder = decode("retry: 3000\n\n", f"retry:{value}\n\n")
    assert decoder.retry == 3000


def test_retry_ascii_digits_set_the_reconnection_time():
    _, decoder = decode("retry: 1500\n\n")
    assert decoder.retry == 1500
    _, decoder = decode("retry:0\n\n")
    assert decoder.retry == 0


def test_retry_alone_dispatches_nothing_and_persists():
    events, decoder = decode("retry: 100\n\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x", retry=100)]
    assert decoder.retry == 100


def test_pending_data_is_discarded_at_end_of_stream():
    assert datas("data: a\n\ndata: b\n") == ["a"]


def test_non_ascii_data_is_kept():
    assert datas("data: caf\u00e9 \u2603 \U0001f600\n\n") == ["caf\u00e9 \u2603 \U0001f600"]


# -- encoder --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    ["", "x", "a\nb\nc", "a\n", "\n", "\n\n", " leading space", "  two", "trail ",
     "colon: inside", ":starts with colon", "data: looks like a field", "caf\u00e9"],
    ids=repr,
)
def test_encode_round_trips_through_the_decoder(data):
    frame = encode(data, id="e-1", event="task")
    events, decoder = decode(frame.decode())
    assert events == [ServerSentEvent(data=data, event="task", id="e-1")]
    assert decoder.last_event_id == "e-1"


def test_encode_normalises_every_line_break_to_line_feed():
    assert datas(encode("a\r\nb\rc\nd").decode()) == ["a\nb\nc\nd"]


def test_encode_writes_one_data_line_per_line():
    assert encode("a\nb") == b"data: a\ndata: b\n\n"
    assert encode("x", id="1", event="e", retry=10) == b"id: 1\nevent: e\nretry: 10\ndata: x\n\n"


def test_encode_sets_retry():
    events, decoder = decode(encode("x", retry=2500).decode())
    assert decoder.retry == 2500
    assert events[0].retry == 2500


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b", "\n", "\0"], ids=repr)
def test_encode_refuses_ids_a_parser_would_misread(bad):
    with pytest.raises(ValueError):
        encode("x", id=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n"], ids=repr)
def test_encode_refuses_line_breaks_in_an_event_name(bad):
    with pytest.raises(ValueError):
        encode("x", event=bad)


def test_comments_are_invisible_to_the_decoder_and_do_not_disturb_events():
    stream = (encode_comment("keepalive") + encode("x", id="1") + encode_comment("a\nb")
              + encode_comment() + encode("y"))
    events, decoder = decode(stream.decode())
    assert [e.data for e in events] == ["x", "y"]
    assert decoder.last_event_id == "1"


def test_encode_comment_prefixes_every_line():
    assert encode_comment("closing: token_expired") == b": closing: token_expired\n\n"
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n\n"
    assert encode_comment() == b": \n\n"


def test_encode_retry():
    assert encode_retry(3000) == b"retry: 3000\n"
    with pytest.raises(ValueError):
        encode_retry(-1)


def test_encode_message_is_one_event_with_id_and_data():
    frame = encode_message("ep-4", b'{"a":1}')
    assert frame == b'id: ep-4\ndata: {"a":1}\n\n'
    assert decode(frame.decode())[0] == [ServerSentEvent(data='{"a":1}', id="ep-4")]


@pytest.mark.parametrize("bad", [b"a\nb", b"a\rb", b"a\r\nb", b"\n"], ids=repr)
def test_encode_message_refuses_multi_line_data(bad):
    with pytest.raises(ValueError):
        encode_message("1", bad)


# -- cross-check with httpx-sse --------------------------------------------------


def httpx_sse_decode(*chunks: str) -> list[tuple[str, str, str]]:
    """httpx-sse's line splitter and parser, keeping only blocks that had data.

    httpx-sse also dispatches a data-less block once any id or retry was seen
    (so each keepalive after an event would be an empty message); the spec
    dispatches nothing for those, so they are left out of the comparison.
    """
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    out = []
    has_data = False
    for chunk in chunks:
        for line in lines.decode(chunk):
            has_data = has_data or line == "data" or line.startswith("data:")
            event = decoder.decode(line)
            if event is not None and has_data:
                out.append((event.data, event.event, event.id))
            if not line:
                has_data = False
    return out


def ours(*chunks: str) -> list[tuple[str, str, str]]:
    return [(e.data, e.event, e.id) for e in decode(*chunks)[0]]


# Streams on which both parsers must agree: every block carries data, no BOM
# (httpx-sse also dispatches data-less blocks and does not strip a BOM).
AGREED = [
    "data: YHOO\ndata: +2\ndata: 10\n\n",
    ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
    "data\n\ndata\ndata\n\n",
    "data:test\n\ndata: test\n\n",
    "event: add\ndata: 1\n\nevent: remove\ndata: 2\n\ndata: 3\n\n",
    "id: 1\ndata: a\n\nid: a\0b\ndata: b\n\n",
    "data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: e\n\n",
    "data: a: b\nfoo: bar\ndata::x\n\n",
    (encode("multi\nline", id="p-1", event="task") + encode_comment("keepalive")
     + encode("next", id="p-2")).decode(),
]


@pytest.mark.parametrize("stream", AGREED, ids=range(len(AGREED)))
def test_decoder_agrees_with_httpx_sse(stream):
    expected = httpx_sse_decode(stream)
    assert expected, "the comparison would be empty"
    assert ours(stream) == expected
    for chunks in every_split(stream)[:: max(1, len(stream) // 8)]:
        assert ours(*chunks) == httpx_sse_decode(*chunks), chunks


def test_httpx_sse_reads_what_the_encoder_writes():
    frames = b"".join([
        encode_retry(1000) + encode_comment("connected"),
        encode("line 1\nline 2", id="e-1", event="resync"),
        encode_message("e-2", b'{"type":"task_update"}'),
        encode_comment("keepalive"),
        encode("", id="e-3"),
    ]).decode()
    assert httpx_sse_decode(frames) == [
        ("line 1\nline 2", "resync", "e-1"),
        ('{"type":"task_update"}', "message", "e-2"),
        ("", "message", "e-3"),
    ]
    assert httpx_sse_decode(frames) == ours(frames)


# -- the service's own framing: no block without data ---------------------------------


def httpx_sse_messages(*chunks: str) -> list[tuple[str, str, str]]:
    """Every message httpx-sse hands its caller, data-less ones included."""
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    return [(event.data, event.event, event.id) for chunk in chunks
            for line in lines.decode(chunk)
            if (event := decoder.decode(line)) is not None]


def test_a_comment_line_without_a_blank_line_dispatches_nothing():
    assert encode_comment_line("keepalive") == b": keepalive\n"
    # Alone, after an id, and inside a block: a comment line is skipped and
    # only a blank line ends a block.
    assert datas(": keepalive\n" * 3) == []
    events, decoder = decode("id: 7\ndata: a\n\n: keepalive\n: keepalive\n")
    assert [e.data for e in events] == ["a"] and decoder.last_event_id == "7"
    assert datas("data: a\n: keepalive\ndata: b\n\n") == ["a\nb"]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "\n"], ids=repr)
def test_encode_comment_line_refuses_line_breaks(bad):
    with pytest.raises(ValueError):
        encode_comment_line(bad)


def test_retry_takes_effect_before_its_block_ends():
    _, decoder = decode("retry: 2500\n: connected\n")
    assert decoder.retry == 2500
    events, _ = decode("retry: 2500\n: connected\nid: e-0\nevent: ready\ndata: {}\n\n")
    assert [(e.event, e.id, e.retry) for e in events] == [("ready", "e-0", 2500)]


HEAD = Position("ep", 3)
PREAMBLE = encode_retry(3100) + encode_comment_line("connected")
# What a stream can carry, in the orders it can carry it.
SESSIONS = {
    "new": [PREAMBLE, ready_frame(HEAD), KEEPALIVE, encode_message("ep-4", b'{"n":4}'),
            KEEPALIVE, KEEPALIVE, closing_frame(CloseReason.TOKEN_EXPIRED)],
    "resync": [PREAMBLE, resync_frame(HEAD, ResyncReason.UNKNOWN_EPOCH), KEEPALIVE,
               closing_frame(CloseReason.SERVER_SHUTDOWN)],
    "resumed, idle": [PREAMBLE, KEEPALIVE, KEEPALIVE, encode_message("ep-4", b'{"n":4}'),
                      closing_frame(CloseReason.SLOW_CONSUMER)],
    "resumed, replay": [PREAMBLE + encode_message("ep-4", b'{"n":4}'), KEEPALIVE,
                        closing_frame(CloseReason.SERVER_SHUTDOWN)],
    "client gone": [PREAMBLE, ready_frame(HEAD), KEEPALIVE,
                    closing_frame(CloseReason.CLIENT_DISCONNECTED),
                    closing_frame(CloseReason.CLOSED)],
}


@pytest.mark.parametrize("frames", SESSIONS.values(), ids=SESSIONS.keys())
def test_every_message_of_a_stream_has_json_data_for_both_parsers(frames):
    stream = b"".join(frames).decode()
    theirs = httpx_sse_messages(stream)
    assert theirs and all(data for data, _, _ in theirs), theirs
    for data, _, _ in theirs:
        json.loads(data)
    assert ours(stream) == theirs
    for chunks in every_split(stream)[:: max(1, len(stream) // 16)]:
        assert httpx_sse_messages(*chunks) == theirs, chunks


def test_the_close_event_names_its_reason_and_moves_no_id():
    stream = (ready_frame(HEAD) + KEEPALIVE + closing_frame(CloseReason.SERVER_SHUTDOWN)).decode()
    events, decoder = decode(stream)
    assert [(e.event, e.id) for e in events] == [("ready", "ep-3"), ("close", "ep-3")]
    assert json.loads(events[1].data) == {"type": "close", "reason": "server_shutdown"}
    assert decoder.last_event_id == "ep-3"
    # A comment too, for people reading with curl.
    assert stream.count(": closing: server_shutdown\n") == 1


@pytest.mark.parametrize("reason", list(CloseReason), ids=str)
def test_only_reasons_a_live_client_can_get_become_close_events(reason):
    events, _ = decode(closing_frame(reason).decode())
    if reason in (CloseReason.CLIENT_DISCONNECTED, CloseReason.CLOSED):
        assert events == []
    else:
        assert [(e.event, json.loads(e.data)) for e in events] == [
            ("close", {"type": "close", "reason": str(reason)})]


@pytest.mark.parametrize("head", [Position("ab12", 0), Position("x" * 40, 2**40)])
def test_the_ready_frame_is_the_encoded_ready_event(head: Position) -> None:
    assert ready_frame(head) == encode('{"type":"ready"}', id=str(head), event="ready")


@pytest.mark.parametrize("epoch", ["a\nevent: forged", "a\rb", "a\0b"])
def test_a_ready_frame_refuses_an_epoch_that_would_break_its_line(epoch: str) -> None:
    with pytest.raises(ValueError):
        ready_frame(Position(epoch, 1))
