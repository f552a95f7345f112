"""Reading JetStream's acks: the plain-form shortcut agrees with ``json.loads`` everywhere."""

from __future__ import annotations

import json
import random
from typing import Any, Optional

import pytest

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, StreamMismatchError, _publisher
from cellos_sink_jetstream._publisher import _read_plain_ack
from tests.conftest import StagedStream


def read_with_json(data: bytes) -> Optional[tuple[str, int, bool]]:
    """What the JSON path makes of ``data``: ``None`` when it is no ack."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    stream, seq = body.get("stream"), body.get("seq")
    if body.get("error") is not None or not isinstance(stream, str) or type(seq) is not int:
        return None
    return stream, seq, bool(body.get("duplicate", False))


# What nats-server writes (2.15 here; the last test checks the installed one): it formats
# the ack itself, with a space after the colon of "duplicate".
SERVER_FORMS = [
    (b'{"stream":"CELLOS","seq":1}', ("CELLOS", 1, False)),
    (b'{"stream":"CELLOS","seq":2,"duplicate": true}', ("CELLOS", 2, True)),
    (b'{"stream":"CELLOS","seq":2,"duplicate":true}', ("CELLOS", 2, True)),
    (b'{"stream":"bench_FILE-2","seq":18446744073709551615}', ("bench_FILE-2", 2**64 - 1, False)),
    ('{"stream":"événements","seq":7}'.encode(), ("événements", 7, False)),
]


@pytest.mark.parametrize(("data", "expected"), SERVER_FORMS)
def test_the_servers_own_forms_take_the_shortcut_and_agree_with_json(
    data: bytes, expected: tuple[str, int, bool]
) -> None:
    assert _read_plain_ack(data) == expected
    assert read_with_json(data) == expected


# Near misses: each must be left to json.loads, which reads it (or refuses it) itself.
LEFT_TO_JSON = [
    b'{"stream":"S","domain":"hub","seq":1}',  # a JetStream domain
    b'{"stream":"S", "domain":"hub", "seq":1}',
    b'{"stream":"S","seq":1,"val":"3"}',  # a counter stream's value
    b'{"stream":"S","seq":1,"batch":"b1","count":2}',
    b'{"error":{"code":400,"err_code":10060,"description":"nope"},"stream":"S","seq":0}',
    b'{"stream":"S","seq":01}',  # a leading zero: invalid JSON
    b'{"stream":"S","seq":-1}',
    b'{"stream":"S","seq":1.0}',
    b'{"stream":"S\x01","seq":1}',  # a control character: invalid JSON
    b'{"stream":"S\\"x","seq":1}',  # an escape
    b'{"stream":"S\\u0041","seq":1}',
    b'{"stream":"\xff","seq":1}',  # not UTF-8
    b'{"stream":"","seq":1}',
    b'{"stream":"S","seq":1,"duplicate": false}',
    b' {"stream":"S","seq":1}',
    b'{"stream":"S","seq":1}\n',
    b'{"seq":1,"stream":"S"}',
    b"ok",
]


@pytest.mark.parametrize("data", LEFT_TO_JSON)
def test_anything_else_is_left_to_json(data: bytes) -> None:
    assert _read_plain_ack(data) is None


def test_generated_replies_read_the_same_both_ways() -> None:
    rng = random.Random(13)
    alphabet = ['"', "\\", "\x00", "\x1f", "\x7f", " ", "é", "\u2028", "a", "Z", "_", "-", "9"]
    taken = 0
    for _ in range(5000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        stream = (
            json.dumps(name, ensure_ascii=rng.random() < 0.3)[1:-1] if rng.random() < 0.5 else name
        )
        seq = rng.choice(
            ["0", "1", "42", "007", "-3", "1e3", str(2**70), str(rng.randint(0, 10**9))]
        )
        tail = rng.choice(
            ["", ',"duplicate": true', ',"duplicate":true', ',"duplicate": false', ',"x":1']
        )
        data = f'{{"stream":"{stream}","seq":{seq}{tail}}}'.encode()
        plain = _read_plain_ack(data)
        if plain is not None:
            taken += 1
            assert plain == read_with_json(data), data
    assert taken > 200, "the shortcut must read the common forms"


@pytest.mark.parametrize("configured", [False, True], ids=["no-stream", "stream"])
def test_a_real_servers_acks_take_the_shortcut(
    stream: StagedStream, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    read: list[Any] = []
    by_json: list[bytes] = []
    stock_read_ack = _publisher.NatsPublisher._read_ack

    def spy(data: bytes) -> Optional[tuple[str, int, bool]]:
        result = _read_plain_ack(data)
        read.append(result)
        return result

    def json_spy(self: Any, subject: str, data: bytes) -> tuple[str, int, bool]:
        by_json.append(data)
        return stock_read_ack(self, subject, data)

    class CountingPattern:
        """The plain-ack expression, counting what it is asked to match."""

        def __init__(self, pattern: Any) -> None:
            self.pattern, self.matched = pattern, 0

        def fullmatch(self, data: bytes) -> Any:
            self.matched += 1
            return self.pattern.fullmatch(data)

    pattern = CountingPattern(_publisher._PLAIN_ACK)
    monkeypatch.setattr(_publisher, "_PLAIN_ACK", pattern)
    monkeypatch.setattr(_publisher, "_read_plain_ack", spy)
    monkeypatch.setattr(_publisher.NatsPublisher, "_read_ack", json_spy)
    event = CloudEventV1(id="ack-1", source="/supervisor", type="cell.lifecycle")
    expected = stream.name if configured else None
    with JetStreamEventSink.connect(stream.url, stream.subject("ack"), stream=expected) as sink:
        first = sink.publish(event)
        again = sink.publish(event)
    assert (first.stream, first.duplicate, again.duplicate) == (stream.name, False, True)
    assert again.seq == first.seq > 0
    assert by_json == []
    assert pattern.matched == 2  # each ack matched once, whichever path read it
    # The configured stream's acks are read where they arrive, without decoding its name.
    decoded = [(stream.name, first.seq, False), (stream.name, first.seq, True)]
    assert read == ([] if configured else decoded)


def test_an_ack_from_another_stream_than_the_expected_one_is_refused_by_name(
    stream: StagedStream,
) -> None:
    # The expected stream's name is compared as bytes; an ack from any other takes the
    # general path, which decodes its name to report the mismatch.
    other = f"{stream.name}_OTHER"
    event = CloudEventV1(id="ack-2", source="/supervisor", type="cell.lifecycle")
    with JetStreamEventSink.connect(stream.url, stream.subject("ack"), stream=other) as sink:
        with pytest.raises(StreamMismatchError, match=stream.name):
            sink.publish(event)
