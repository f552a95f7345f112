"""CloudEvents binary content mode (NATS protocol binding 1.0.3 draft), and reading both modes."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from typing import Any

import nats
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cellos_sink_jetstream import (
    CloudEventV1,
    ConfigError,
    InvalidEventError,
    JetStreamEventSink,
)
from cellos_sink_jetstream._binary_mode import (
    BinaryEncoder,
    from_nats_message,
    is_binary_mode,
    percent_decode,
    percent_encode,
)
from cellos_sink_jetstream._cli import main
from cellos_sink_jetstream._headers import _check_header
from tests._nats import read_stream
from tests.conftest import StagedStream
from tests.fakes import InstantPublisher
from tests.test_event import ce_text, events, extension_names, json_values
from tests.test_headers import written_by_nats_py, written_by_publish_now

EXPECTED_STREAM = {"Nats-Expected-Stream": "CELLOS"}
SAFE_VALUE = re.compile(r"[!-~]+")


# -- percent-encoding, as the binding's section 3.1.3.2 specifies ------------------------------


def test_the_bindings_own_example() -> None:
    assert percent_encode("Euro \u20ac \U0001f600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert percent_decode("Euro%20%E2%82%AC%20%F0%9F%98%80") == "Euro \u20ac \U0001f600"


def test_space_double_quote_and_percent_are_encoded_other_printable_ascii_is_not() -> None:
    printable = "".join(chr(c) for c in range(0x21, 0x7F))
    encoded = percent_encode(" " + printable)
    assert encoded == "%20!%22#$%25&'()*+,-./" + printable[printable.index("0") :]


def test_decoding_accepts_lower_case_needless_escapes_and_quoted_strings() -> None:
    assert percent_decode("caf%c3%a9") == "café"
    assert percent_decode("%61bc") == "abc"
    assert percent_decode('"a \\"quoted\\" value"') == 'a "quoted" value'
    assert percent_decode('""') == ""
    assert percent_encode("") == '""'


def test_line_breaks_and_colons_cannot_start_a_header_of_their_own() -> None:
    # The event model already refuses control characters in attributes; the encoding
    # would neutralise them anyway.
    assert percent_encode("a\r\nInjected: 1") == "a%0D%0AInjected:%201"
    assert percent_encode("\x00\x7f\u0085") == "%00%7F%C2%85"
    with pytest.raises(InvalidEventError):
        CloudEventV1(id="x", source="/s", type="t", extensions={"note": "a\r\nX: 1"})


def test_decoding_refuses_invalid_utf8_overlong_forms_included() -> None:
    with pytest.raises(ValueError):
        percent_decode("%C0%A0")
    with pytest.raises(ValueError):
        percent_decode("%FF")


# -- the header-injection properties hold for every ce- header ---------------------------------


@given(events())
def test_every_binary_header_is_safe_and_written_as_nats_py_writes_it(event: CloudEventV1) -> None:
    encoder = BinaryEncoder(EXPECTED_STREAM)
    if not re.fullmatch(r"[!-~](?:[ -~]*[!-~])?", event.datacontenttype or "-") or (
        (event.datacontenttype or "").lower().startswith("application/cloudevents")
    ):
        # Only a datacontenttype that cannot be a Content-Type header is refused.
        with pytest.raises(InvalidEventError, match="datacontenttype"):
            encoder.encode(event)
        return
    _body, headers = encoder.encode(event)
    for name, value in headers.items():
        _check_header(name, value)  # what nats-py would refuse or rewrite: nothing
        if name.startswith("ce-"):
            assert SAFE_VALUE.fullmatch(value), (name, value)
    assert headers["Nats-Msg-Id"] == event.id
    assert written_by_publish_now(headers) == written_by_nats_py(dict(headers))
    # Every attribute comes back; extension values as their canonical strings. (Data is
    # read by its media type, which here is random text: the next test checks data.)
    read = from_nats_message(headers, b"")
    expected = event.to_dict()
    for member in ("data", "data_base64"):
        expected.pop(member, None)
    for name, value in event.extensions.items():
        expected[name] = str(value).lower() if isinstance(value, bool) else str(value)
    got = read.to_dict()
    for member in ("data", "data_base64"):
        got.pop(member, None)
    assert got == expected


@given(
    st.dictionaries(extension_names, ce_text | st.just(""), max_size=4),
    st.one_of(json_values, st.binary(min_size=1, max_size=40)),
)
def test_string_extensions_and_data_round_trip_exactly(
    extensions: dict[str, str], data: Any
) -> None:
    assume(data is not None)
    event = CloudEventV1(id="e", source="/s", type="t", data=data, extensions=extensions)
    body, headers = BinaryEncoder({}).encode(event)
    if isinstance(data, bytes):
        assert body == data
    else:
        assert json.loads(body) == data
    assert from_nats_message(headers, body) == event


# -- the sink, against a real server ------------------------------------------------------------

WHEN = datetime(2026, 12, 2, 9, 30, 15, 250000, tzinfo=timezone.utc)

ROUND_TRIP_EVENTS = [
    CloudEventV1(
        id="json-1",
        source="/supervisor/zürich",
        type="cell.started",
        subject='cells/café "one" 100%',
        time=WHEN,
        dataschema="https://example.com/schema.json",
        data={"runId": "r-42", "städte": ["Zürich", "東京"], "n": 1.5},
        extensions={"tenantid": "acme", "note": "naïve 😀 value", "empty": ""},
    ),
    CloudEventV1(
        id="bytes-1",
        source="/supervisor",
        type="cell.blob",
        datacontenttype="application/octet-stream",
        data=bytes(range(256)),
        extensions={"tenantid": "acme"},
    ),
    CloudEventV1(id="bytes-2", source="/supervisor", type="cell.blob", data=b"\x00\xffraw"),
    CloudEventV1(
        id="text-1",
        source="/supervisor",
        type="cell.log",
        datacontenttype="text/plain; charset=utf-8",
        data="línea uno\nline two",
    ),
    CloudEventV1(
        id="json-2",
        source="/supervisor",
        type="cell.stopped",
        datacontenttype="application/json",
        data=[1, "zwei", None],
    ),
    CloudEventV1(id="nodata-1", source="/supervisor", type="cell.tick", time=WHEN),
]


@pytest.mark.parametrize("content_mode", ["structured", "binary"])
def test_events_round_trip_through_the_stream_in_either_mode(
    stream: StagedStream, content_mode: str
) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("rt"), stream=stream.name, content_mode=content_mode
    ) as sink:
        for event in ROUND_TRIP_EVENTS:
            sink.emit(event)
        assert sink.publish(ROUND_TRIP_EVENTS[0]).duplicate  # Nats-Msg-Id: the event id
    messages = read_stream(stream.url, stream.name)
    assert [CloudEventV1.from_nats_message(m.headers, m.data) for m in messages] == (
        ROUND_TRIP_EVENTS
    )
    for message, event in zip(messages, ROUND_TRIP_EVENTS):
        assert message.headers is not None
        assert message.headers["Nats-Msg-Id"] == event.id
        assert message.headers["Nats-Expected-Stream"] == stream.name
        assert is_binary_mode(message.headers) == (content_mode == "binary")
        if content_mode == "structured":
            assert message.headers["Content-Type"] == "application/cloudevents+json"
            assert CloudEventV1.from_json(message.data) == event
            continue
        assert message.headers["ce-id"] == event.id
        assert message.headers["ce-specversion"] == "1.0"
        if event.datacontenttype is not None:
            assert message.headers["Content-Type"] == event.datacontenttype
        if isinstance(event.data, bytes):
            assert message.data == event.data
    binary = {m.headers["ce-id"]: m for m in messages if m.headers and "ce-id" in m.headers}
    if content_mode == "binary":
        first = binary["json-1"]
        assert first.headers is not None
        assert first.headers["ce-subject"] == "cells/caf%C3%A9%20%22one%22%20100%25"
        assert first.headers["ce-note"] == "na%C3%AFve%20%F0%9F%98%80%20value"
        assert first.headers["ce-empty"] == '""'
        assert first.headers["ce-time"] == "2026-12-02T09:30:15.250000Z"
        assert first.headers["Content-Type"] == "application/json"
        assert json.loads(first.data) == ROUND_TRIP_EVENTS[0].data
        assert binary["text-1"].data == "línea uno\nline two".encode()


def test_binary_mode_sends_int_and_bool_extensions_as_their_canonical_strings(
    stream: StagedStream,
) -> None:
    event = CloudEventV1(
        id="typed", source="/s", type="t", extensions={"attempt": 3, "replayed": False}
    )
    with JetStreamEventSink.connect(
        stream.url, stream.subject("typed"), content_mode="binary"
    ) as sink:
        sink.emit(event)
    (message,) = read_stream(stream.url, stream.name)
    assert message.headers is not None
    assert (message.headers["ce-attempt"], message.headers["ce-replayed"]) == ("3", "false")
    read = CloudEventV1.from_nats_message(message.headers, message.data)
    assert dict(read.extensions) == {"attempt": "3", "replayed": "false"}


def test_tail_shows_events_of_both_modes(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode in ("structured", "binary"):
        with JetStreamEventSink.connect(
            stream.url, stream.subject(mode), content_mode=mode
        ) as sink:
            sink.emit(
                CloudEventV1(
                    id=f"{mode}-1", source="/s", type="cell.started", data={"mode": mode},
                    extensions={"note": "ü ö"},
                )
            )  # fmt: skip
    assert main(["tail", "--subject", "cellos.events.>", "--all", "--url", stream.url]) == 0
    out = capsys.readouterr().out
    bodies = [json.loads(chunk) for chunk in re.split(r"^--- .*$", out, flags=re.M)[1:]]
    assert [(b["id"], b["data"], b["note"]) for b in bodies] == [
        ("structured-1", {"mode": "structured"}, "ü ö"),
        ("binary-1", {"mode": "binary"}, "ü ö"),
    ]
    assert (
        main(["tail", "--subject", "cellos.events.binary", "--oneline", "--url", stream.url]) == 0
    )
    assert 'cell.started id=binary-1 {"mode":"binary"}' in capsys.readouterr().out


# -- bad input ------------------------------------------------------------------------------


def test_content_mode_must_be_structured_or_binary() -> None:
    with pytest.raises(ConfigError, match="content_mode"):
        JetStreamEventSink.from_publisher(
            InstantPublisher(), "cellos.events.x", content_mode="Binary"
        )


@pytest.mark.parametrize(
    "media_type", ["application/cloudevents+json", "text/plain; charset=ü", " text/plain"]
)
def test_a_datacontenttype_that_cannot_be_a_content_type_header_is_refused(
    media_type: str,
) -> None:
    publisher = InstantPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, "cellos.events.x", content_mode="binary"
    ) as sink:
        bad = CloudEventV1(id="x", source="/s", type="t", datacontenttype=media_type, data="d")
        with pytest.raises(InvalidEventError, match="datacontenttype"):
            sink.emit(bad)
        sink.emit(CloudEventV1(id="y", source="/s", type="t"))  # the sink carries on
    assert [headers["ce-id"] for _, _, headers in publisher.received] == ["y"]


@pytest.mark.parametrize(
    ("headers", "attribute"),
    [
        ({"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s"}, "type"),
        ({"ce-specversion": "1.0", "ce-id": "%C0%A0", "ce-source": "/s", "ce-type": "t"}, "id"),
        ({"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t",
          "ce-data": "x"}, "data"),
        ({"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t",
          "Content-Type": "application/json"}, "data"),
    ],
)  # fmt: skip
def test_a_bad_binary_message_is_an_invalid_event(headers: dict[str, str], attribute: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        from_nats_message(headers, b"{not json")
    assert excinfo.value.attribute == attribute


def test_header_names_are_matched_case_insensitively() -> None:
    event = CloudEventV1.from_nats_message(
        {"CE-SpecVersion": "1.0", "Ce-Id": "x", "ce-SOURCE": "/s", "ce-type": "t"}, b""
    )
    assert (event.id, event.source, event.data) == ("x", "/s", None)
    structured = CloudEventV1(id="s", source="/s", type="t", data=[1])
    assert CloudEventV1.from_nats_message(None, structured.to_json()) == structured
    assert (
        CloudEventV1.from_nats_message(
            {"content-type": "Application/CloudEvents+JSON", "ce-specversion": "1.0"},
            structured.to_json(),
        )
        == structured
    )


def test_a_message_read_with_nats_pys_get_msg_reads_back_even_without_data(
    stream: StagedStream,
) -> None:
    # nats-py's js.get_msg() gives an empty body as None (and no headers as None), so
    # from_nats_message(msg.headers, msg.data) must take None for "no body".
    events = [
        CloudEventV1(id=f"{mode}-{n}", source="/s", type="t", data=data, extensions={"n": "1"})
        for mode in ("binary", "structured")
        for n, data in enumerate((None, {"a": 1}))
    ]
    for mode, pair in (("binary", events[:2]), ("structured", events[2:])):
        with JetStreamEventSink.connect(
            stream.url, stream.subject("getmsg"), content_mode=mode
        ) as sink:
            for event in pair:
                sink.emit(event)

    async def get_all() -> list[tuple[Any, Any]]:
        nc = await nats.connect(stream.url)
        try:
            js = nc.jetstream()
            got = [await js.get_msg(stream.name, seq) for seq in range(1, 5)]
            return [(msg.headers, msg.data) for msg in got]
        finally:
            await nc.close()

    stored = asyncio.run(get_all())
    assert stored[0][1] is None  # what nats-py hands a user for the binary no-data event
    read = [CloudEventV1.from_nats_message(headers, body) for headers, body in stored]
    assert read == events


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"ce-specversion": "1.0"}, "text"),
        ({"ce-specversion": "1.0"}, 42),
        (None, ["not", "bytes"]),
        (["ce-id", "x"], b""),
        ({"ce-specversion": "1.0", "ce-id": 7, "ce-source": "/s", "ce-type": "t"}, b""),
    ],
)
def test_headers_or_a_body_of_the_wrong_type_are_an_invalid_event(headers: Any, body: Any) -> None:
    with pytest.raises(InvalidEventError):
        CloudEventV1.from_nats_message(headers, body)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b"\xff\xfe", "text/plain"),
        (b"{not json", "application/json"),
        (b"\xff", "application/vnd.cellos+json"),
    ],
)
def test_bytes_data_a_receiver_could_not_read_under_its_media_type_is_refused(
    stream: StagedStream, data: bytes, media_type: str
) -> None:
    # Binary mode sends bytes data as the body, as it is; a receiver reads the body by its
    # media type (from_nats_message, tail). Stored, this event could never be read back.
    with JetStreamEventSink.connect(
        stream.url, stream.subject("unreadable"), content_mode="binary"
    ) as sink:
        bad = CloudEventV1(id="bad", source="/s", type="t", datacontenttype=media_type, data=data)
        with pytest.raises(InvalidEventError, match="datacontenttype") as excinfo:
            sink.emit(bad)
        assert excinfo.value.attribute == "data"
        good = CloudEventV1(
            id="good", source="/s", type="t", datacontenttype=media_type, data=b'"ok"'
        )
        sink.emit(good)  # readable bytes under the same media type go
    [message] = read_stream(stream.url, stream.name)
    assert CloudEventV1.from_nats_message(message.headers, message.data).id == "good"
