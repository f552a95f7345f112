"""JetStream's refusals of one message go to its caller only and never move the breaker.

Against a real server: a stream with a small ``max_msg_size`` refuses an oversized event
(code 400) while other threads keep publishing; an expected stream that does not match
is refused the same way; a probe answered with such a refusal proves JetStream is up.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    Connected,
    JetStreamEventSink,
    MessageRejectedError,
    PublishError,
    Reconnecting,
    StreamMismatchError,
)
from cellos_sink_jetstream._breaker import BreakerState
from tests._nats import read_stream, stage_stream
from tests._polling import wait_until
from tests.conftest import StagedStream
from tests.fakes import GatedPublisher
from tests.test_sink_unit import FakeClock, in_thread, make_event, open_circuit

MAX_MSG_SIZE = 1024
GOOD_THREADS = 4
GOOD_PER_THREAD = 50
BAD_SENDS = 40


def event(event_id: str, size: int = 10) -> CloudEventV1:
    return CloudEventV1(id=event_id, source="/rejections", type="cell.rejected", data="x" * size)


class Transitions:
    def __init__(self) -> None:
        self.items: list[tuple[BreakerState, BreakerState]] = []

    def __call__(self, old: BreakerState, new: BreakerState) -> None:
        self.items.append((old, new))


def connection_in_msgs(stream: StagedStream, name: str) -> int:
    connz = stream.server.monitor("/connz")
    [connection] = [c for c in connz["connections"] if c.get("name") == name]
    return int(connection["in_msgs"])


def test_an_event_too_large_for_the_stream_fails_alone_and_never_opens_the_circuit(
    nats_server_factory: Any,
) -> None:
    server = nats_server_factory()
    stage_stream(server.url, "SMALL", ["small.>"], max_msg_size=MAX_MSG_SIZE)
    staged = StagedStream(url=server.url, name="SMALL", subject_prefix="small", server=server)
    transitions = Transitions()
    bad = event("too-large", size=2 * MAX_MSG_SIZE)
    rejections: list[MessageRejectedError] = []
    other_errors: list[BaseException] = []
    with JetStreamEventSink.connect(
        server.url,
        "small.events",
        name="rejections",
        on_transition=transitions,
        retry_attempts=3,
        env={},
    ) as sink:

        def resend_the_bad_one() -> None:
            for _ in range(BAD_SENDS):
                try:
                    sink.publish(bad)
                except MessageRejectedError as exc:
                    rejections.append(exc)
                except BaseException as exc:
                    other_errors.append(exc)

        def emit_good(thread: int) -> None:
            for n in range(GOOD_PER_THREAD):
                try:
                    sink.emit(event(f"good-{thread}-{n}"))
                except BaseException as exc:
                    other_errors.append(exc)

        threads = [threading.Thread(target=resend_the_bad_one)]
        threads += [threading.Thread(target=emit_good, args=(t,)) for t in range(GOOD_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = sink.stats()
        # Each refusal was sent once (not retried), besides the good events and
        # connect()'s JetStream check.
        sent = connection_in_msgs(staged, "rejections")
        assert sink.debug_state() == Connected()
    assert other_errors == []
    assert transitions.items == []
    assert stats.breaker_openings == 0
    assert stats.published == GOOD_THREADS * GOOD_PER_THREAD
    assert stats.failed == BAD_SENDS
    assert len(rejections) == BAD_SENDS
    first = rejections[0]
    assert isinstance(first, PublishError)
    assert first.cause is None
    assert first.code == 400
    assert first.err_code == 10054
    assert "maximum" in first.description
    assert "code 400" in str(first)
    assert first.description in str(first)
    assert sent == GOOD_THREADS * GOOD_PER_THREAD + BAD_SENDS + 1
    stored = read_stream(server.url, "SMALL")
    assert len(stored) == GOOD_THREADS * GOOD_PER_THREAD


def test_a_wrong_expected_stream_fails_each_event_and_never_opens_the_circuit(
    stream: StagedStream,
) -> None:
    transitions = Transitions()
    with JetStreamEventSink.connect(
        stream.url, stream.subject("x"), stream="SOMETHING_ELSE", on_transition=transitions
    ) as sink:
        for n in range(3):
            with pytest.raises(StreamMismatchError) as info:
                sink.emit(event(f"mismatch-{n}"))
            assert isinstance(info.value, MessageRejectedError)
            assert info.value.code == 400
            assert info.value.err_code == 10060
        assert sink.debug_state() == Connected()
    assert transitions.items == []
    assert read_stream(stream.url, stream.name) == []


def test_a_probe_refused_for_its_message_closes_the_circuit(stream: StagedStream) -> None:
    """The refusal is JetStream's answer: NATS is up again, whatever the message was."""
    stage_stream(stream.url, "SMALL", ["small.>"], max_msg_size=MAX_MSG_SIZE)
    with JetStreamEventSink.connect(
        stream.url, "small.events", publish_timeout=1.0, reconnect_time_wait=0.05
    ) as sink:
        sink.emit(event("before"))
        stream.server.stop()
        with pytest.raises(PublishError):
            sink.emit(event("during"))
        assert isinstance(sink.debug_state(), Reconnecting)
        stream.server.start()
        refused: list[MessageRejectedError] = []

        def probe_with_the_oversized_event() -> bool:
            try:
                sink.publish(event("too-large", size=2 * MAX_MSG_SIZE))
            except CircuitOpenError:
                return False
            except MessageRejectedError as exc:
                refused.append(exc)
                return True
            except PublishError:  # the connection is not back yet: a failed probe
                return False
            raise AssertionError("the oversized event was stored")

        wait_until(probe_with_the_oversized_event, 15, "no probe was ever answered")
        assert refused[0].err_code == 10054
        assert sink.debug_state() == Connected()
        sink.emit(event("after"))


# -- the breaker's side, with a fake publisher and a fake clock ---------------------------


def rejected() -> MessageRejectedError:
    return MessageRejectedError(
        "fake: too large (code 400, err_code 10054)",
        code=400,
        err_code=10054,
        description="message size exceeds maximum allowed",
    )


def test_a_rejection_is_not_retried_and_moves_nothing() -> None:
    publisher = GatedPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, "a.b", clock=FakeClock(), retry_attempts=3, publish_timeout=2.0
    ) as sink:
        pending = in_thread(lambda: sink.emit(make_event(1)))
        publisher.next_call().fail(rejected())
        with pytest.raises(MessageRejectedError):
            pending.result(5)
        assert publisher.calls.empty()  # not retried
        assert sink.debug_state() == Connected()
        assert sink.stats().failed == 1


def test_a_probe_answered_with_a_rejection_closes_the_circuit() -> None:
    clock = FakeClock()
    publisher = GatedPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, "a.b", clock=clock, retry_attempts=1, publish_timeout=2.0
    ) as sink:
        open_circuit(sink, publisher)
        state = sink.debug_state()
        assert isinstance(state, Reconnecting)
        clock.now = state.next_after
        probe = in_thread(lambda: sink.emit(make_event(2)))
        publisher.next_call().fail(rejected())
        with pytest.raises(MessageRejectedError):
            probe.result(5)
        assert sink.debug_state() == Connected()
        assert sink.stats().probes == 1
