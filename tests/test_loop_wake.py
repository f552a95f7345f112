"""LoopWaker alone (on a loop of its own), and the sink's callers waking its loop thread
through it against a real server."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Iterator

import pytest

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, _loop_wake
from cellos_sink_jetstream._loop_wake import LoopWaker
from tests._nats import read_stream
from tests.conftest import StagedStream


class LoopThread:
    """An event loop running on a thread of its own, with a LoopWaker attached on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.woken_on: list[int] = []
        self.woken = threading.Event()
        self.waker = LoopWaker(self._on_wake)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.on_loop(lambda: self.waker.attach(self.loop))

    def _on_wake(self) -> None:
        self.woken_on.append(threading.get_ident())
        self.woken.set()

    def on_loop(self, call: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                call()  # type: ignore[operator]
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10)

    def close(self) -> None:
        self.on_loop(self.waker.detach)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    running = LoopThread()
    try:
        yield running
    finally:
        running.close()


def test_a_wake_from_another_thread_runs_on_wake_on_the_loop_thread(
    loop_thread: LoopThread,
) -> None:
    assert loop_thread.waker.keeps_the_gil
    loop_thread.waker.wake()
    assert loop_thread.woken.wait(10)
    assert loop_thread.woken_on == [loop_thread.thread.ident]


def test_the_wake_up_write_keeps_the_gil() -> None:
    # The point of the module: PyDLL functions are called without releasing the GIL
    # (CDLL ones release it, as socket.send does).
    assert _loop_wake._GIL_HOLDING_IO is not None
    for function in _loop_wake._GIL_HOLDING_IO:
        assert function._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]


def test_many_wake_ups_before_the_loop_reads_never_block_and_make_one_call() -> None:
    loop = asyncio.new_event_loop()
    calls: list[int] = []
    waker = LoopWaker(lambda: calls.append(1))
    waker.attach(loop)
    try:
        # More wake-ups than a pipe holds (64 KiB on Linux): the writes must not block.
        def wake_often() -> None:
            for _ in range(100_000):
                waker.wake()

        writer = threading.Thread(target=wake_often)
        writer.start()
        writer.join(30)
        assert not writer.is_alive()

        async def a_few_turns() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        loop.run_until_complete(a_few_turns())
        assert calls == [1]
    finally:
        waker.detach()
        loop.close()


def test_a_wake_up_after_detach_writes_to_no_descriptor_even_a_reused_one() -> None:
    loop = asyncio.new_event_loop()
    calls: list[int] = []
    waker = LoopWaker(lambda: calls.append(1))
    waker.attach(loop)
    waker.detach()
    # The lowest free numbers: those the waker's pipe just gave back, on Linux.
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        waker.wake()
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 1)
        loop.run_until_complete(asyncio.sleep(0))
        assert calls == []
    finally:
        os.close(read_fd)
        os.close(write_fd)
        loop.close()


def test_a_wake_up_before_attach_does_nothing() -> None:
    calls: list[int] = []
    waker = LoopWaker(lambda: calls.append(1))
    waker.wake()
    assert calls == []
    assert not waker.keeps_the_gil


def test_without_gil_holding_io_it_falls_back_to_call_soon_threadsafe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_loop_wake, "_GIL_HOLDING_IO", None)
    running = LoopThread()
    try:
        assert not running.waker.keeps_the_gil
        running.waker.wake()
        assert running.woken.wait(10)
        assert running.woken_on == [running.thread.ident]
    finally:
        running.close()


def test_the_sinks_callers_wake_its_loop_through_the_pipe(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("wake"), publish_timeout=5.0
    ) as sink:
        runner = sink._runner
        assert runner is not None
        assert runner._waker.keeps_the_gil
        errors: list[BaseException] = []

        def emit_some(thread: int) -> None:
            try:
                for n in range(25):
                    sink.emit(CloudEventV1.create("t", "/wake", {"n": n, "t": thread}))
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=emit_some, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert sink.stats().published == 200
    assert runner._waker._write_fd == -1  # closed with the loop
    assert len(read_stream(stream.url, stream.name)) == 200
