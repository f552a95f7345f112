"""Pre-encoded headers: byte for byte what nats-py itself would write."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import nats.errors
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from cellos_sink_jetstream import CloudEventV1, ConfigError, InvalidEventError, JetStreamEventSink
from cellos_sink_jetstream._headers import EncodedHeaders, HeaderTemplate, encode_header_block
from cellos_sink_jetstream._nats_client import SinkClient
from tests.fakes import InstantPublisher

FIXED = {"Content-Type": "application/cloudevents+json", "Nats-Expected-Stream": "CELLOS"}


PAYLOAD = b'{"specversion":"1.0"}'


def written_by_nats_py(headers: dict[str, str]) -> bytes:
    """The bytes nats-py's own publish path queues for one message (no connection)."""
    written: list[bytes] = []

    async def capture(command: bytes, priority: bool = False) -> None:
        written.append(command)

    client = Client()
    client._send_command = capture  # type: ignore[method-assign]
    client._flush_queue = None
    asyncio.run(
        client._send_publish("cellos.events.a", "_INBOX.x.7", PAYLOAD, len(PAYLOAD), headers)
    )
    assert len(written) == 1
    return written[0]


def written_by_publish_now(headers: Mapping[str, str]) -> bytes:
    """The bytes the sink's client queues for one message (no connection)."""
    client = SinkClient(require_tls=False)
    client._status = Client.CONNECTED
    client.publish_now("cellos.events.a", "_INBOX.x.7", PAYLOAD, headers)
    assert len(client._pending) == 1
    assert client.stats["out_msgs"] == 1
    return client._pending[0]


@pytest.mark.parametrize(
    "msg_id",
    [
        "evt-1",
        "3f0c2a4e-9b7d-4c1e-8d2f-0a1b2c3d4e5f",
        "ünïcode-ид",
        "zero\u200bwidth and\u00a0no-break space",  # valid CloudEvents ids, not isprintable()
        "emoji-😀",
    ],
)
def test_encoded_headers_are_written_exactly_as_nats_py_writes_the_mapping(msg_id: str) -> None:
    headers = HeaderTemplate(FIXED, "Nats-Msg-Id").fill(msg_id)
    assert dict(headers) == {**FIXED, "Nats-Msg-Id": msg_id}
    ours = written_by_publish_now(headers)
    assert ours == written_by_nats_py(dict(headers))
    assert ours.startswith(b"HPUB cellos.events.a _INBOX.x.7 ")


def test_plain_mappings_are_encoded_as_nats_py_encodes_them() -> None:
    plain = {**FIXED, "Nats-Msg-Id": "evt-1"}
    assert written_by_publish_now(plain) == written_by_nats_py(plain)
    with pytest.raises(ValueError, match="header"):
        encode_header_block({"X": "a\r\nInjected: 1"})


def test_publish_now_refuses_what_publish_refuses() -> None:
    client = SinkClient(require_tls=False)
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        client.publish_now("a.b", "r", b"x", {})  # not connected
    client._status = Client.CONNECTED
    client._max_payload = 4
    with pytest.raises(nats.errors.MaxPayloadError):
        client.publish_now("a.b", "r", b"12345", {})
    client._status = Client.CLOSED
    with pytest.raises(nats.errors.ConnectionClosedError):
        client.publish_now("a.b", "r", b"x", {})
    assert client._pending == []


@pytest.mark.parametrize(
    ("fixed", "per_message"),
    [
        ({"Bad Name": "x"}, "Nats-Msg-Id"),
        ({"Name:": "x"}, "Nats-Msg-Id"),
        ({"X": "a\r\nInjected: 1"}, "Nats-Msg-Id"),
        ({"X": " padded"}, "Nats-Msg-Id"),
        ({"X": ""}, "Nats-Msg-Id"),
        (FIXED, "Nats Msg Id"),
    ],
)
def test_a_template_refuses_headers_it_could_not_write_faithfully(
    fixed: dict[str, str], per_message: str
) -> None:
    with pytest.raises(ValueError, match="header"):
        HeaderTemplate(fixed, per_message)


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", " evt", "evt\t", "", "a\nb"])
def test_an_id_that_would_break_the_header_block_never_reaches_fill(value: str) -> None:
    # fill() trusts its caller: the event model is the one guard, and refuses these.
    with pytest.raises(InvalidEventError, match="id"):
        CloudEventV1(id=value, source="/s", type="t")


def test_encoded_headers_are_an_ordinary_mapping_for_other_publishers() -> None:
    headers = HeaderTemplate(FIXED, "Nats-Msg-Id").fill("evt-9")
    assert isinstance(headers, EncodedHeaders)
    assert headers.wire.endswith(b"Nats-Msg-Id: evt-9\r\n\r\n")
    assert dict(headers.items()) == {**FIXED, "Nats-Msg-Id": "evt-9"}


@pytest.mark.parametrize("stream", ["", "a.b", "a b", "x*", "x>", "a/b", "a\\b", "é", "A\r\nB", 7])
def test_a_stream_name_jetstream_would_refuse_is_a_config_error(stream: object) -> None:
    with pytest.raises(ConfigError, match="stream"):
        JetStreamEventSink.from_publisher(InstantPublisher(), "a.b", stream=stream)


def test_the_expected_stream_header_carries_a_valid_name() -> None:
    publisher = InstantPublisher()
    with JetStreamEventSink.from_publisher(publisher, "a.b", stream="CELLOS_v-2") as sink:
        sink.emit({"id": "e1", "source": "/t", "type": "t", "specversion": "1.0"})
    assert publisher.received[0][2]["Nats-Expected-Stream"] == "CELLOS_v-2"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_every_id_the_event_model_accepts_is_sent_as_nats_py_would_send_it(
    candidate: str,
) -> None:
    try:
        event = CloudEventV1(id=candidate, source="/s", type="t")
    except InvalidEventError:
        assume(False)
    headers = HeaderTemplate(FIXED, "Nats-Msg-Id").fill(event.id)
    assert written_by_publish_now(headers) == written_by_nats_py(dict(headers))
