"""BusyPollSelector alone (over a socket pair), and how the sink's loop thread uses it
against a real server."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, _busy_poll
from cellos_sink_jetstream._busy_poll import BusyPollSelector
from tests._nats import read_stream
from tests.conftest import StagedStream


class SelectSpy:
    """Records the timeout of every select() the busy-poll selector makes underneath."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        on_poll: Callable[[int], None] = lambda polls: None,
    ) -> None:
        self.timeouts: list[Optional[float]] = []
        stock = selectors.DefaultSelector.select

        def select(selector: Any, timeout: Optional[float] = None) -> Any:
            self.timeouts.append(timeout)
            if timeout == 0:
                on_poll(self.polls)
            return stock(selector, timeout)

        monkeypatch.setattr(selectors.DefaultSelector, "select", select)

    @property
    def polls(self) -> int:
        return self.timeouts.count(0)

    @property
    def blocking(self) -> list[Optional[float]]:
        return [timeout for timeout in self.timeouts if timeout != 0]


class SteppingClock:
    """Stands in for the ``time`` module: each ``monotonic()`` is ``step`` s after the last."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = time.monotonic()

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def readable_pair() -> Iterator[tuple[BusyPollSelector, socket.socket]]:
    """A selector watching one end of a socket pair for reading, and the other end."""
    reader, writer = socket.socketpair()
    selector = BusyPollSelector()
    selector.register(reader, selectors.EVENT_READ)
    try:
        yield selector, writer
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_it_polls_until_the_socket_is_readable_without_blocking(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, writer = readable_pair

    def write_on_the_third_poll(polls: int) -> None:
        # From the polling thread itself: another thread would wait for the GIL.
        if polls == 3:
            writer.send(b"x")

    spy = SelectSpy(monkeypatch, on_poll=write_on_the_third_poll)
    # No round counts as slow here, however busy the machine (that has its own test).
    monkeypatch.setattr(_busy_poll, "_CONTENDED_POLL_SECONDS", 60.0)
    selector.busy_poll(10.0)
    ready = selector.select(None)
    assert len(ready) == 1
    assert spy.polls == 3
    assert spy.blocking == []


def test_without_busy_poll_it_blocks_at_once(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, writer = readable_pair
    spy = SelectSpy(monkeypatch)
    writer.send(b"x")
    assert len(selector.select(5.0)) == 1
    assert spy.timeouts == [5.0]


def test_busy_poll_is_spent_by_one_select(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, _writer = readable_pair
    spy = SelectSpy(monkeypatch)
    selector.busy_poll(0.001)
    assert selector.select(0.05) == []
    polls_of_the_first = spy.polls
    assert polls_of_the_first >= 1
    assert selector.select(0.01) == []
    assert spy.polls == polls_of_the_first  # the second one blocked at once
    assert spy.blocking[-1] == 0.01


def test_a_non_blocking_select_leaves_the_busy_poll_for_the_next_blocking_one(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, _writer = readable_pair
    spy = SelectSpy(monkeypatch)
    selector.busy_poll(0.001)
    assert selector.select(0) == []  # asyncio's "ready callbacks are waiting" turn
    assert spy.timeouts == [0]
    assert selector.select(0.05) == []
    assert spy.polls >= 2  # the second call polled too


def test_the_timeout_bounds_the_polling(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, _writer = readable_pair
    spy = SelectSpy(monkeypatch)
    selector.busy_poll(10.0)  # far longer than the loop's next timer
    started = time.monotonic()
    assert selector.select(0.05) == []
    elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 5.0
    assert spy.polls >= 1
    assert all(timeout is not None and timeout <= 0.05 for timeout in spy.blocking)


def test_after_the_polling_time_it_blocks_for_the_rest_of_the_timeout(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    selector, _writer = readable_pair
    spy = SelectSpy(monkeypatch)
    selector.busy_poll(0.002)
    assert selector.select(1.0) == []
    assert spy.polls >= 1
    assert len(spy.blocking) == 1
    (rest,) = spy.blocking
    assert rest is not None
    assert 0.5 < rest < 1.0


def test_a_slow_poll_round_stops_the_polling(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round that took far longer than a poll waited for another thread (the GIL):
    # polling on would only take turns with that thread, so the selector blocks.
    selector, _writer = readable_pair
    clock = SteppingClock(step=0.002)  # every round "took" 2 ms, as a wait for the GIL does
    monkeypatch.setattr(_busy_poll, "time", clock)
    spy = SelectSpy(monkeypatch)
    selector.busy_poll(10.0)
    assert selector.select(0.2) == []
    assert spy.polls == 1
    assert len(spy.blocking) == 1


def test_polls_that_keep_running_out_rest_for_a_while(
    readable_pair: tuple[BusyPollSelector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where acks come later than the polling time, polling only burns the CPU: after
    # 3 polls in a row found nothing, the next 5 requests (100 by default) are ignored.
    monkeypatch.setattr(_busy_poll, "_REQUESTS_IGNORED_WHILE_RESTING", 5)
    monkeypatch.setattr(_busy_poll, "_CONTENDED_POLL_SECONDS", 60.0)  # every poll runs out
    selector, writer = readable_pair
    spy = SelectSpy(monkeypatch)

    def polls_of_one_select(budget: float = 0.001) -> int:
        before = spy.polls
        selector.busy_poll(budget)
        selector.select(0.05)
        return spy.polls - before

    assert [polls_of_one_select() > 0 for _ in range(3)] == [True] * 3
    assert [polls_of_one_select() for _ in range(5)] == [0] * 5
    assert polls_of_one_select() > 0  # trying again: a first miss
    assert polls_of_one_select() > 0  # a second
    writer.send(b"x")
    assert polls_of_one_select() == 1  # found at once: the misses are forgotten
    (key,) = selector.get_map().values()
    assert key.fileobj.recv(1) == b"x"  # type: ignore[union-attr]
    # Were the two misses remembered, the first of these would start a rest.
    assert [polls_of_one_select() > 0 for _ in range(3)] == [True] * 3
    assert polls_of_one_select() == 0  # three misses again: resting


def test_a_lone_emit_from_one_thread_polls_for_its_ack_and_many_threads_do_not(
    stream: StagedStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    armed: list[float] = []
    stock_busy_poll = BusyPollSelector.busy_poll

    def busy_poll(selector: BusyPollSelector, seconds: float) -> None:
        armed.append(seconds)
        stock_busy_poll(selector, seconds)

    monkeypatch.setattr(BusyPollSelector, "busy_poll", busy_poll)
    with JetStreamEventSink.connect(
        stream.url, stream.subject("busypoll"), publish_timeout=5.0
    ) as sink:
        assert isinstance(sink._runner._selector, BusyPollSelector)
        for n in range(20):
            sink.emit(CloudEventV1.create("t", "/one", {"n": n}))
        # Every emit after the first follows one from the same thread.
        assert len(armed) >= 19
        assert all(0 < seconds < 0.01 for seconds in armed)

        armed.clear()
        barrier = threading.Barrier(8)

        def emit_in_turns(thread: int) -> None:
            # Each thread emits only after the one before it in the round did: no thread
            # ever sends twice in a row.
            for n in range(5):
                barrier.wait(5)
                for turn in range(8):
                    if turn == thread:
                        sink.emit(CloudEventV1.create("t", "/many", {"n": n, "t": thread}))
                    barrier.wait(5)

        threads = [threading.Thread(target=emit_in_turns, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert armed == []
    assert len(read_stream(stream.url, stream.name)) == 60
