"""LeanFuture behaves as concurrent.futures.Future wherever callers can tell."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from cellos_sink_jetstream._lean_future import _USE_LEAN, LeanFuture, make_future


def test_this_python_gets_the_lean_future() -> None:
    # 3.9 to 3.13 all match; a mismatch would silently cost the speed, so say so here.
    assert _USE_LEAN
    assert type(make_future()) is LeanFuture
    assert isinstance(make_future(), concurrent.futures.Future)


def test_result_from_another_thread_and_timeouts() -> None:
    future: LeanFuture[int] = LeanFuture()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.01)
    waiting = threading.Barrier(2)

    def settle() -> None:
        waiting.wait()
        future.set_result(42)

    threading.Thread(target=settle).start()
    waiting.wait()
    assert future.result(timeout=5) == 42
    assert future.done()
    assert not future.cancelled()
    assert future._condition._waiters == []  # type: ignore[attr-defined]


def test_every_waiting_thread_is_woken() -> None:
    future: LeanFuture[str] = LeanFuture()
    results: list[str] = []
    lock = threading.Lock()

    def wait() -> None:
        value = future.result(timeout=10)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=wait) for _ in range(16)]
    for thread in threads:
        thread.start()
    future.set_result("done")
    for thread in threads:
        thread.join(10)
    assert results == ["done"] * 16


def test_a_timed_out_waiter_leaves_nothing_behind() -> None:
    future: LeanFuture[int] = LeanFuture()
    for _ in range(3):
        with pytest.raises(concurrent.futures.TimeoutError):
            future.exception(timeout=0)
    assert future._condition._waiters == []  # type: ignore[attr-defined]
    future.set_exception(ValueError("boom"))
    assert isinstance(future.exception(timeout=0), ValueError)
    with pytest.raises(ValueError, match="boom"):
        future.result()


def test_cancel_callbacks_and_running_state() -> None:
    seen: list[Any] = []
    cancelled: LeanFuture[int] = LeanFuture()
    cancelled.add_done_callback(lambda f: seen.append(("cancelled", f.cancelled())))
    assert cancelled.cancel()
    assert not cancelled.set_running_or_notify_cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled.result(0)

    running: LeanFuture[int] = LeanFuture()
    assert running.set_running_or_notify_cancel()
    assert running.running()
    assert not running.cancel()
    running.set_result(7)
    running.add_done_callback(lambda f: seen.append(("late", f.result())))
    with pytest.raises(concurrent.futures.InvalidStateError, match="FINISHED"):
        running.set_result(8)  # its message is built while the condition is held
    assert seen == [("cancelled", True), ("late", 7)]
    assert "finished returned int" in repr(running)


def test_wait_and_as_completed_mixed_with_stock_futures() -> None:
    lean: LeanFuture[int] = LeanFuture()
    stock: concurrent.futures.Future[int] = concurrent.futures.Future()
    done, pending = concurrent.futures.wait([lean, stock], timeout=0.01)
    assert (done, pending) == (set(), {lean, stock})
    threading.Timer(0.01, lean.set_result, (1,)).start()
    done, _ = concurrent.futures.wait(
        [lean, stock], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done == {lean}
    stock.set_result(2)
    assert sorted(f.result() for f in concurrent.futures.as_completed([lean, stock], 5)) == [1, 2]
    assert lean._waiters == []  # type: ignore[attr-defined]
    assert stock._waiters == []  # type: ignore[attr-defined]


def test_asyncio_can_await_it() -> None:
    future: LeanFuture[str] = LeanFuture()

    async def main() -> str:
        asyncio.get_running_loop().call_soon(
            threading.Thread(target=future.set_result, args=("x",)).start
        )
        return await asyncio.wait_for(asyncio.wrap_future(future), 5)

    assert asyncio.run(main()) == "x"
