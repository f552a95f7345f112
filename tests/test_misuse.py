"""The sink's contract under misuse (issue #9), against real nats-server processes.

Every test here drives the public API as a careless or hostile caller would and then
checks that the sink still keeps its promises: a clear typed error for bad input, no
event lost or misreported, a background thread that keeps draining.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from cellos_sink_jetstream import (
    BackpressureError,
    CloudEventV1,
    ConfigError,
    Connected,
    JetStreamEventSink,
    PublishError,
    PublishTimeoutError,
    Reconnecting,
    ReentrantEmitError,
    SinkClosedError,
    SinkError,
    SpoolingEventSink,
)
from cellos_sink_jetstream._requests import BlockingRequest, PublishRequest
from cellos_sink_jetstream._runner import LoopRunner
from cellos_sink_jetstream._sink import _CALLER_GRACE_SECONDS
from tests._nats import DUPLICATE_WINDOW, read_stream
from tests._polling import wait_until
from tests._servers import frozen
from tests.conftest import StagedStream
from tests.fakes import GatedPublisher

#: Timeouts no call may accept: not finite, not positive, past the documented bound, or
#: not a number at all.
BAD_TIMEOUTS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    1e10,
    86_400.5,
    0,
    0.0,
    -1,
    "1",
    True,
]


def event(n: int, prefix: str = "misuse", **kwargs: Any) -> CloudEventV1:
    return CloudEventV1(
        id=f"{prefix}-{n}", source="/misuse", type="cell.misuse", data={"n": n}, **kwargs
    )


def in_thread(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Run ``fn`` on a new thread; its outcome lands in the returned future."""
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(fn())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def stored_ids(stream: StagedStream) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in read_stream(stream.url, stream.name) if m.headers]


# -- 1. timeouts ------------------------------------------------------------------------

CALLS_WITH_A_TIMEOUT: dict[str, Callable[[JetStreamEventSink, Any], object]] = {
    "publish": lambda sink, t: sink.publish(event(0, "bad-timeout"), timeout=t),
    "emit_nowait": lambda sink, t: sink.emit_nowait(event(0, "bad-timeout"), timeout=t),
    "flush": lambda sink, t: sink.flush(timeout=t),
    "close": lambda sink, t: sink.close(timeout=t),
}


@pytest.mark.parametrize("call", sorted(CALLS_WITH_A_TIMEOUT))
def test_a_bad_timeout_is_refused_before_anything_is_queued(
    stream: StagedStream, call: str
) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("timeouts"), publish_timeout=2.0
    ) as sink:
        for n, bad in enumerate(BAD_TIMEOUTS):
            with pytest.raises(ConfigError, match="timeout") as info:
                CALLS_WITH_A_TIMEOUT[call](sink, bad)
            assert not isinstance(info.value, OverflowError)
            assert not sink.closed, f"close(timeout={bad!r}) closed the sink anyway"
            # The loop still drains: a normal emit goes through at once.
            sink.emit(event(n, f"after-{call}"))
        assert sink.stats().published == len(BAD_TIMEOUTS)
    assert "bad-timeout-0" not in stored_ids(stream)


@pytest.mark.parametrize("option", ["publish_timeout", "connect_timeout", "reconnect_time_wait"])
def test_a_bad_timeout_option_is_refused_by_the_constructors(
    stream: StagedStream, option: str
) -> None:
    for bad in BAD_TIMEOUTS:
        with pytest.raises(ConfigError, match=option):
            JetStreamEventSink.connect(stream.url, stream.subject("ctor"), **{option: bad})


def test_none_means_the_default_or_no_limit(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(stream.url, stream.subject("none")) as sink:
        sink.publish(event(1, "none"), timeout=None)
        sink.emit_nowait(event(2, "none"), timeout=None).result(10)
        assert sink.flush(timeout=None) is True
    assert sorted(stored_ids(stream)) == ["none-1", "none-2"]


def test_the_loop_drains_whatever_deadline_a_request_carries(stream: StagedStream) -> None:
    """Defence in depth: a request whose deadline is not a finite number (which the public
    API no longer lets through) still gets an outcome, and the loop keeps draining."""
    from cellos_sink_jetstream._requests import FutureRequest

    with JetStreamEventSink.connect(
        stream.url, stream.subject("deadline"), publish_timeout=2.0
    ) as sink:
        runner = sink._current_runner()
        odd = []
        for n, deadline in enumerate([math.inf, math.nan, -math.inf, 1e300]):
            request = FutureRequest(
                stream.subject("deadline"),
                b"{}",
                {"Nats-Msg-Id": f"odd-{n}"},
                deadline,
                sink._breaker.admit(),
            )
            runner.submit(request, 1.0)
            odd.append(request.future)
            sink.emit(event(n, "after-odd"))
        for future in odd:
            future.exception(10)  # an outcome, whichever
        for n in range(3):
            sink.emit(event(n, "still-draining"))
        assert sink.flush(10) is True


# -- 4. flush() waits for every earlier outcome, in whatever order they come ------------


def test_flush_waits_for_an_earlier_event_whose_outcome_comes_after_a_later_one() -> None:
    publisher = GatedPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, "cellos.events.flush", publish_timeout=30.0, retry_attempts=1
    ) as sink:
        earlier = sink.emit_nowait(event(1, "flush"))
        earlier_call = publisher.next_call()
        flushed = in_thread(lambda: sink.flush(1.0))
        runner = sink._current_runner()
        wait_until(lambda: runner._flush_targets, 5, "flush() never started waiting")
        later = sink.emit_nowait(event(2, "flush"))
        publisher.next_call().ack(seq=2)
        later.result(5)
        # The earlier event is still pending: flush() must not report success.
        assert flushed.result(10) is False
        earlier_call.ack(seq=1)
        earlier.result(5)
        assert sink.flush(5) is True


# -- 6. every call keeps its own time bound, whatever other callers pass ---------------


def test_a_probe_is_bounded_by_publish_timeout_whoever_sends_it(stream: StagedStream) -> None:
    """A probe sent by ``publish(timeout=60)`` to a frozen server fails after the sink's
    ``publish_timeout`` (0.5 s), so the next probe is scheduled; it used to hold the
    circuit for the caller's 60 s."""
    with JetStreamEventSink.connect(
        stream.url, stream.subject("probe"), publish_timeout=0.5, retry_attempts=1
    ) as sink:
        sink.emit(event(0, "probe"))
        with frozen(stream.server):
            with pytest.raises(PublishTimeoutError):
                sink.emit(event(1, "probe"))
            assert sink.debug_state().attempt == 0  # type: ignore[union-attr]
            wait_until(lambda: sink._breaker.retry_after() == 0, 10, "no probe became due")
            probe = in_thread(lambda: sink.publish(event(2, "probe"), timeout=60))
            wait_until(
                lambda: getattr(sink.debug_state(), "attempt", 0) == 1,
                20,
                "the probe held the circuit for the caller's timeout, not publish_timeout",
            )
            with pytest.raises(PublishTimeoutError):
                probe.result(5)
            assert sink.stats().probes == 1


def test_an_emit_keeps_its_bound_when_it_waited_for_room_in_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``max_in_flight=1``, ``max_queue=1``: others' long publishes hold the one slot and
    the queue; the emit waits for room, gets in, then waits behind them. Its wait for the
    outcome must end by the one deadline it set when it started (+ the caller's grace): it
    used to wait the full timeout again once it got in (2 x timeout + 0.25 s).

    No clock bound (a loaded machine delays any thread's wake-up): the time the emit had
    room is read just after its submit returned, so ``had_room + wait timeout <= deadline
    + grace`` holds whatever the load, and misses by the time it waited for room if the
    timeout starts over once it got in."""
    publish_timeout = 2.0
    had_room: dict[bytes, float] = {}
    waits: dict[bytes, tuple[float, float]] = {}
    submit, wait = LoopRunner.submit, BlockingRequest.wait

    def recording_submit(runner: LoopRunner, request: PublishRequest, timeout: Any) -> None:
        submit(runner, request, timeout)
        had_room[request.payload] = time.monotonic()

    def recording_wait(request: BlockingRequest, timeout: float, grace: float = 0.0) -> bool:
        # The longest it may wait: until the deadline, then the grace if already sent.
        waits.setdefault(request.payload, (timeout + grace, request.deadline))
        return wait(request, timeout, grace)

    monkeypatch.setattr(LoopRunner, "submit", recording_submit)
    monkeypatch.setattr(BlockingRequest, "wait", recording_wait)
    publisher = GatedPublisher()
    with JetStreamEventSink.from_publisher(
        publisher,
        "cellos.events.bound",
        publish_timeout=publish_timeout,
        max_in_flight=1,
        max_queue=1,
        retry_attempts=1,
    ) as sink:
        holder = in_thread(lambda: sink.publish(event(1, "bound"), timeout=60))
        holder_call = publisher.next_call()
        queued = in_thread(lambda: sink.publish(event(2, "bound"), timeout=60))
        wait_until(lambda: sink.stats().queue_depth == 1, 5, "the second publish never queued")
        emitted = in_thread(lambda: sink.emit(event(3, "bound")))
        # Not synchronisation: the scenario needs the emit to wait a while for room (and
        # less than the slot timeout, after which the holder's slot is freed anyway).
        time.sleep(publish_timeout * 0.8)
        holder_call.ack(seq=1)  # room: the queued publish goes in flight, the emit is queued
        holder.result(5)
        queued_call = publisher.next_call()
        with pytest.raises(BackpressureError):  # gave up while queued: never sent
            emitted.result(30)
        queued_call.ack(seq=2)
        queued.result(5)
    [payload] = [p for p in waits if b'"bound-3"' in p]
    timeout, deadline = waits[payload]
    overshoot = had_room[payload] + timeout - (deadline + _CALLER_GRACE_SECONDS)
    assert overshoot <= 1e-6, f"emit() waited {overshoot:.2f}s past its deadline and grace"


# -- 3. close() does not call "not stored" what it sent ---------------------------------


def test_close_reports_events_already_sent_as_outcome_unknown(stream: StagedStream) -> None:
    """Events written to a frozen server's socket may be stored once it resumes: close()
    must fail them with ``PublishTimeoutError`` (re-emit to be sure), and only events it
    never sent with ``SinkClosedError``; what the stream holds afterwards decides."""
    count = 20
    sink = JetStreamEventSink.connect(stream.url, stream.subject("close"), publish_timeout=30.0)
    sink.emit(event(0, "close-warm"))
    with frozen(stream.server):
        futures = [sink.emit_nowait(event(n, "close")) for n in range(count)]
        blocked = in_thread(lambda: sink.emit(event(count, "close")))
        wait_until(
            lambda: sink.stats().queue_depth == 0 and sink.stats().in_flight == count + 1,
            10,
            "the events never left the queue",
        )
        sink.close(timeout=1.0)
        errors = [f.exception(5) for f in futures]
        errors.append(blocked.exception(5))
    ids = [f"close-{n}" for n in range(count + 1)]
    # Give the resumed server a moment to store what it received (it usually stores all).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: set(ids) <= set(stored_ids(stream)), 5, "")
    stored = set(stored_ids(stream))
    wrong = [
        (event_id, type(error).__name__)
        for event_id, error in zip(ids, errors)
        if isinstance(error, SinkClosedError) and event_id in stored
    ]
    assert wrong == [], "close() said 'not stored' of events the stream holds"
    assert [type(e).__name__ for e in errors] == ["PublishTimeoutError"] * (count + 1)


# -- 5. close() and flush() from the sink's own loop thread -----------------------------


def _disconnected(caplog: pytest.LogCaptureFixture) -> bool:
    return any("disconnected from NATS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["close", "flush"])
def test_close_or_flush_from_on_transition_never_blocks_the_loop(
    stream: StagedStream, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The callback runs on the loop thread: close() there starts closing and returns,
    flush() is refused; either way the emit that opened the circuit gets its real error
    ("not sent", not a timeout), and after flush() the sink goes on working."""
    caplog.set_level(logging.INFO, logger="cellos_sink_jetstream")
    called: list[str] = []
    sinks: list[JetStreamEventSink] = []

    def on_transition(old: object, new: object) -> None:
        try:
            getattr(sinks[0], method)()
            called.append("returned")
        except SinkError as exc:
            called.append(type(exc).__name__)

    sink = JetStreamEventSink.connect(
        stream.url,
        stream.subject("callback"),
        publish_timeout=3.0,
        retry_attempts=1,
        on_transition=on_transition,
        name=f"callback-{method}",
    )
    sinks.append(sink)
    try:
        sink.emit(event(0, "callback"))
        stream.server.stop()
        wait_until(lambda: _disconnected(caplog), 10, "the sink never saw the disconnect")
        with pytest.raises(PublishError) as info:
            sink.emit(event(1, "callback"))
        assert not isinstance(info.value, PublishTimeoutError), info.value
        assert "not sent" in str(info.value)
        if method == "close":
            assert called == ["returned"]
            assert sink.closed
            runner = sink._runner
            assert runner is not None
            wait_until(lambda: not runner._thread.is_alive(), 10, "the loop never stopped")
            with pytest.raises(SinkClosedError):
                sink.emit(event(2, "callback"))
        else:
            assert called == ["ReentrantEmitError"]
            stream.server.start()

            def emits() -> bool:
                try:
                    sink.emit(event(3, "callback"))
                except PublishError:
                    return False
                return True

            wait_until(emits, 20, "the sink never published again: its loop is blocked")
            assert called[-1] == "ReentrantEmitError"  # the closing transition
    finally:
        sink.close(timeout=2.0)
        sinks.clear()


def test_close_and_flush_from_a_futures_done_callback(stream: StagedStream) -> None:
    results: list[str] = []
    sink = JetStreamEventSink.connect(stream.url, stream.subject("done-callback"))
    try:

        def flush_then_close(future: concurrent.futures.Future[Any]) -> None:
            results.append(threading.current_thread().name)
            try:
                sink.flush(5)
            except SinkError as exc:
                results.append(type(exc).__name__)
            sink.close(timeout=5)
            results.append("closed")

        # Frozen, so the future is still pending when the callback is added: it then runs
        # on the loop thread when the ack arrives, not at once on this one.
        with frozen(stream.server):
            future = sink.emit_nowait(event(0, "done-callback"))
            future.add_done_callback(flush_then_close)
        future.result(10)
        wait_until(lambda: "closed" in results, 10, "close() from the callback never returned")
        assert results == ["cellos-sink-jetstream", "ReentrantEmitError", "closed"]
        assert sink.closed
        wait_until(lambda: not sink._runner._thread.is_alive(), 10, "the loop never stopped")  # type: ignore[union-attr]
        assert sink.flush(1) is True
    finally:
        sink.close(timeout=2.0)


# -- 9. a sink dropped without close() ---------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _use_and_drop(url: str, subject: str, n: int, wait: bool) -> concurrent.futures.Future[Any]:
    sink = JetStreamEventSink.connect(url, subject, publish_timeout=10.0, wait=wait)
    if wait:
        sink.emit(event(n, "dropped"))
    else:
        wait_until(lambda: sink.state == Connected(), 10, "the sink never connected")
    # Still in flight when the sink is dropped: it must get its outcome all the same.
    return sink.emit_nowait(event(n, "dropped-pending"))


def test_a_sink_dropped_without_close_is_closed_after_garbage_collection(
    stream: StagedStream, caplog: pytest.LogCaptureFixture
) -> None:
    count = 50
    gc.collect()
    threads_before = threading.active_count()
    fds_before = _open_fds()
    pending = [
        _use_and_drop(stream.url, stream.subject("dropped"), n, wait=n % 2 == 0)
        for n in range(count)
    ]
    gc.collect()
    wait_until(
        lambda: threading.active_count() <= threads_before,
        60,
        "the threads of dropped sinks are still running",
    )
    wait_until(lambda: _open_fds() <= fds_before, 30, "the sockets of dropped sinks are open")
    assert all(f.done() for f in pending)
    acked = [f for f in pending if f.exception() is None]
    assert len(acked) == count, [f.exception() for f in pending if f.exception()]
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "without close()" in r.getMessage()
    ]
    assert len(warnings) == count
    assert sum(i.startswith("dropped-pending-") for i in stored_ids(stream)) == count


# -- 1. (sizes) no retry_attempts value holds the queue past a deadline ------------------


def test_a_huge_retry_attempts_cannot_hold_the_queue_or_the_circuit(
    stream: StagedStream, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes that fail fast (connection down) are retried within the event's deadline
    only: with ``retry_attempts=10**6`` the emit used to time out while the loop kept
    retrying the write for days, holding every later event and never opening the
    circuit. Now the emit gets its real "not sent" error and the circuit opens."""
    caplog.set_level(logging.INFO, logger="cellos_sink_jetstream")
    with JetStreamEventSink.connect(
        stream.url, stream.subject("retries"), publish_timeout=1.0, retry_attempts=10**6
    ) as sink:
        sink.emit(event(0, "retries"))
        stream.server.stop()
        wait_until(lambda: _disconnected(caplog), 10, "the sink never saw the disconnect")
        with pytest.raises(PublishError) as info:
            sink.emit(event(1, "retries"))
        assert not isinstance(info.value, PublishTimeoutError), info.value
        assert isinstance(sink.state, Reconnecting)


def test_a_long_publish_cannot_hold_an_in_flight_slot_past_publish_timeout(
    stream: StagedStream,
) -> None:
    """``max_in_flight=1``: a ``publish(timeout=60)`` to a frozen server used to hold the
    only slot for 60 s, so an ``emit_nowait`` future queued behind it (bounded by the
    sink's 1 s ``publish_timeout``) stayed pending as long. Past ``publish_timeout`` the
    long publish keeps waiting for its ack but frees its slot."""
    with JetStreamEventSink.connect(
        stream.url, stream.subject("slot"), publish_timeout=1.0, max_in_flight=1
    ) as sink:
        sink.emit(event(0, "slot"))
        with frozen(stream.server):
            holder = in_thread(lambda: sink.publish(event(1, "slot"), timeout=60))
            wait_until(lambda: sink.stats().in_flight == 1, 10, "the publish never started")
            queued = sink.emit_nowait(event(2, "slot"))
            assert isinstance(queued.exception(15), SinkError)
            assert not holder.done()
        # Resumed: the long publish still gets its ack, within its own 60 s.
        assert holder.result(30).seq > 0


_DROP_AND_EXIT = """
import gc, sys, logging
from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink
logging.basicConfig(level=logging.WARNING)
def ev(n):
    return CloudEventV1(id=f"exit-drop-{n}", source="/misuse", type="cell.misuse")
sink = JetStreamEventSink.connect(sys.argv[1], sys.argv[2], publish_timeout=5.0, exit_timeout=1.0)
sink.emit(ev(0))
print("READY", flush=True)
sys.stdin.readline()  # the server is frozen now
futures = [sink.emit_nowait(ev(n)) for n in range(1, 6)]
del sink
gc.collect()
print("EXITING", flush=True)
"""


def test_a_dropped_sink_still_closing_at_exit_exits_quietly_in_time(
    stream: StagedStream,
) -> None:
    """A sink collected without close() just before the interpreter exits, with events in
    flight on a frozen server: its closing (on a daemon thread) neither holds up the exit
    nor prints anything but the one WARNING."""
    command = [sys.executable, "-c", _DROP_AND_EXIT, stream.url, stream.subject("exit")]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            assert child.stdout.readline() == b"READY\n"
            with frozen(stream.server):
                child.stdin.write(b"go\n")
                child.stdin.close()
                assert child.stdout.readline() == b"EXITING\n"
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pytest.fail("the child did not exit while its dropped sink was closing")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.stderr is not None
        stderr = child.stderr.read().decode(errors="replace")
    assert child.returncode == 0, stderr
    assert stderr.count("garbage-collected without close()") == 1, stderr
    for noise in ("Task was destroyed", "Exception ignored", "Traceback", "Fatal Python"):
        assert noise not in stderr, stderr


# -- 1./5. the public calls added since: duplicate_window(), the spool's drain()/close() --


def test_duplicate_window_checks_its_timeout_and_refuses_the_loop_thread(
    stream: StagedStream,
) -> None:
    got: list[BaseException] = []
    with JetStreamEventSink.connect(
        stream.url, stream.subject("window"), stream=stream.name
    ) as sink:
        assert sink.duplicate_window() == DUPLICATE_WINDOW
        for bad in BAD_TIMEOUTS:
            with pytest.raises(ConfigError, match="timeout"):
                sink.duplicate_window(timeout=bad)

        def from_loop(future: concurrent.futures.Future[Any]) -> None:
            try:
                sink.duplicate_window(timeout=5.0)
            except SinkError as exc:
                got.append(exc)

        with frozen(stream.server):  # pending when the callback is added: runs on the loop
            future = sink.emit_nowait(event(0, "window"))
            future.add_done_callback(from_loop)
        future.result(10)
        wait_until(lambda: got, 10, "duplicate_window() from the loop thread never returned")
        assert isinstance(got[0], ReentrantEmitError)
        sink.emit(event(1, "window"))


def test_the_spools_drain_and_close_check_their_timeouts(
    stream: StagedStream, tmp_path: Path
) -> None:
    inner = JetStreamEventSink.connect(stream.url, stream.subject("spool"))
    with SpoolingEventSink(inner, tmp_path / "spool") as spool:
        for bad in BAD_TIMEOUTS:
            with pytest.raises(ConfigError, match="timeout"):
                spool.drain(timeout=bad)
            with pytest.raises(ConfigError, match="timeout"):
                spool.close(timeout=bad)
            assert not spool.closed
            spool.emit(event(0, "spool"))
        assert spool.drain(timeout=10) is True
    assert inner.closed
