"""The ack frame reader: what nats-py's own parser would do with every byte, in order.

Each test feeds the same server bytes, cut into reads at chosen or random places, to
nats-py's parser and to :class:`DirectReplyParser`, and compares what each hands on: the
direct subscription's messages (which the fast reader delivers itself) and everything
else (which it must leave to nats-py, in the same order).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Optional

import pytest
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from cellos_sink_jetstream._reply_parser import DirectReplyParser

DIRECT_SID = 7
OTHER_SID = 3


class Recorder:
    """Stands in for the nats-py client: records what either parser hands on."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.by_fast_reader = 0
        # (messages, payload bytes) the fast reader reported, per read that delivered any.
        self.counted: list[tuple[int, int]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Optional[bytes]
    ) -> None:
        self.seen.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    def _process_info(self, info: dict[str, Any]) -> asyncio.Future[None]:
        # Awaited by nats-py since 2.10, called without await before: serve both.
        self.seen.append(("info", info))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _process_err(self, message: str) -> None:
        self.seen.append(("err", message))

    def direct_handler(self, subject: bytes, data: bytes, status: Optional[str]) -> None:
        assert status is None
        self.by_fast_reader += 1
        # As nats-py would have delivered it: no reply subject, no headers.
        self.seen.append(("msg", DIRECT_SID, subject, b"", data, None))

    def delivered(self, messages: int, payload_bytes: int) -> None:
        self.counted.append((messages, payload_bytes))

    def fast_parser(self) -> DirectReplyParser:
        return DirectReplyParser(self, {DIRECT_SID: self.direct_handler}, self.delivered)


def ack_payload(seq: int) -> bytes:
    return b'{"stream":"EVENTS","seq":%d}' % seq


def ack(seq: int, sid: int = DIRECT_SID) -> bytes:
    payload = ack_payload(seq)
    return b"MSG _INBOX.abc.%d %d %d\r\n%b\r\n" % (seq, sid, len(payload), payload)


def hmsg(subject: bytes, sid: int, header: bytes, payload: bytes) -> bytes:
    size = len(header)
    return b"HMSG %b %d %d %d\r\n%b%b\r\n" % (
        subject,
        sid,
        size,
        size + len(payload),
        header,
        payload,
    )


OTHER_FRAMES = [
    b"PING\r\n",
    b"PONG\r\n",
    b"+OK\r\n",
    b'INFO {"server_id":"x","max_payload":1048576}\r\n',
    b"-ERR 'Unknown Protocol Operation'\r\n",
    ack(900, OTHER_SID),  # another subscription's message
    b"MSG _INBOX.abc.901 7 reply.to 2\r\nhi\r\n",  # with a reply subject
    hmsg(b"_INBOX.abc.902", DIRECT_SID, b"NATS/1.0 503\r\n\r\n", b""),  # no responders
    hmsg(b"_INBOX.abc.903", DIRECT_SID, b"NATS/1.0\r\nA: b\r\n\r\n", b"abc"),
    b"MSG  _INBOX.abc.904  7  2\r\nhi\r\n",  # several spaces: nats-py's regex allows them
]

#: Direct frames at the edges of the format, which the fast reader takes.
ODD_DIRECT_FRAMES = [
    b"MSG _INBOX.abc.905 7 0\r\n\r\n",  # an empty payload
    b"MSG _INBOX.abc.906 7 6\r\na\r\nb\r\n\r\n",  # CRLF inside and at the end of it
]


def run(parser: Parser, reads: list[bytes]) -> None:
    async def feed() -> None:
        for data in reads:
            await parser.parse(data)

    asyncio.run(feed())


def both_parsers_on(reads: list[bytes]) -> tuple[Recorder, Recorder]:
    stock, fast = Recorder(), Recorder()
    run(Parser(stock), reads)
    run(fast.fast_parser(), reads)
    return stock, fast


def cut(stream: bytes, at: list[int]) -> list[bytes]:
    edges = [0, *sorted(at), len(stream)]
    return [stream[start:end] for start, end in zip(edges, edges[1:])]


def test_a_read_of_acks_is_delivered_by_the_fast_reader_in_order() -> None:
    stream = b"".join(ack(seq) for seq in range(200))
    stock, fast = both_parsers_on([stream])
    assert fast.seen == stock.seen
    assert fast.by_fast_reader == 200
    assert fast.seen[-1][4] == ack_payload(199)
    # nats-py's counts of what came in, told once for the read.
    assert fast.counted == [(200, sum(len(ack_payload(seq)) for seq in range(200)))]


def test_a_handler_that_raises_costs_its_own_message_only(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    taken: list[bytes] = []

    def handler(subject: bytes, data: bytes, status: Optional[str]) -> None:
        taken.append(data)
        if data == ack_payload(2):
            raise RuntimeError("boom")

    parser = DirectReplyParser(recorder, {DIRECT_SID: handler}, recorder.delivered)
    run(parser, [ack(1) + ack(2) + ack(3)])
    assert taken == [ack_payload(1), ack_payload(2), ack_payload(3)]
    assert recorder.counted == [(3, sum(len(ack_payload(seq)) for seq in (1, 2, 3)))]
    assert "handling a reply from NATS failed" in caplog.text


@pytest.mark.parametrize("frame", OTHER_FRAMES, ids=lambda frame: frame[:12].decode())
def test_every_other_frame_and_all_after_it_are_left_to_nats_py_in_order(frame: bytes) -> None:
    stream = ack(1) + ack(2) + frame + ack(3) + ack(4)
    stock, fast = both_parsers_on([stream])
    assert fast.seen == stock.seen
    assert len(fast.seen) == (4 if frame == b"+OK\r\n" else 5)  # nats-py records no +OK
    assert fast.by_fast_reader == 2  # the two before it; nats-py read the rest


@pytest.mark.parametrize("frame", ODD_DIRECT_FRAMES, ids=["empty", "crlf-inside"])
def test_direct_frames_at_the_edges_of_the_format_are_taken_as_nats_py_takes_them(
    frame: bytes,
) -> None:
    stream = ack(1) + frame + ack(2)
    stock, fast = both_parsers_on([stream])
    assert fast.seen == stock.seen
    assert fast.by_fast_reader == 3


def test_a_stream_cut_at_every_byte_is_read_as_nats_py_reads_it() -> None:
    stream = ack(1) + b"PING\r\n" + ack(2) + OTHER_FRAMES[7] + ack(3) + ack(4) + ack(5)
    whole, _ = both_parsers_on([stream])
    for at in range(1, len(stream)):
        stock, fast = both_parsers_on(cut(stream, [at]))
        assert fast.seen == stock.seen == whole.seen, at


def test_the_fast_reader_takes_over_again_after_nats_py_read_a_frame() -> None:
    # Read by read: the frame nats-py takes does not leave it reading every later read.
    reads = [ack(1) + b"PING\r\n" + ack(2), ack(3) + ack(4), ack(5)[:10], ack(5)[10:]]
    stock, fast = both_parsers_on(reads)
    assert fast.seen == stock.seen
    assert fast.by_fast_reader == 4  # 1, then 3, 4 and 5; nats-py took the PING and 2


def test_a_payload_cut_in_two_waits_in_the_fast_reader_not_in_nats_py() -> None:
    frame = ack(1)
    parser = Recorder().fast_parser()
    run(parser, [frame[:-5]])
    # No control line taken: nats-py's parser could carry on from here as well.
    assert parser.state == AWAITING_CONTROL_LINE
    assert parser.buf == bytearray(frame[:-5])


def test_random_streams_cut_at_random_are_read_as_nats_py_reads_them() -> None:
    rng = random.Random(1303)
    for _ in range(300):
        frames = [
            ack(rng.randrange(10**6))
            if rng.random() < 0.7
            else rng.choice(OTHER_FRAMES + ODD_DIRECT_FRAMES)
            for _ in range(rng.randrange(1, 30))
        ]
        stream = b"".join(frames)
        at = [rng.randrange(1, len(stream)) for _ in range(rng.randrange(0, 6))]
        stock, fast = both_parsers_on(cut(stream, at))
        assert fast.seen == stock.seen, (frames, at)


def test_a_reset_parser_reads_a_fresh_connection_from_its_first_byte() -> None:
    recorder = Recorder()
    parser = recorder.fast_parser()
    run(parser, [ack(1)[:15]])  # the connection drops mid-frame; nats-py resets its parser
    parser.reset()
    run(parser, [ack(2)])
    assert recorder.seen == [("msg", DIRECT_SID, b"_INBOX.abc.2", b"", ack_payload(2), None)]


def test_a_frame_too_long_to_copy_on_every_read_is_left_to_nats_py() -> None:
    # Kept by the fast reader, a 200 KiB frame arriving 1 KiB at a time would be copied
    # again on every read; nats-py's parser appends to its buffer in place.
    payload = bytes(range(256)) * 800
    big = b"MSG _INBOX.abc.1 7 %d\r\n%b\r\n" % (len(payload), payload)
    stream = ack(1) + big + ack(2)
    reads = [*cut(stream, list(range(1024, len(stream), 1024))), ack(3)]
    stock, fast = both_parsers_on(reads)
    assert fast.seen == stock.seen
    assert [entry[4] for entry in fast.seen] == [
        ack_payload(1),
        payload,
        ack_payload(2),
        ack_payload(3),
    ]
    # The acks before and after; nats-py read the long frame and its read's tail.
    assert fast.by_fast_reader == 2
