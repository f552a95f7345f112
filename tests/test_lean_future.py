"""LeanFuture behaves as concurrent.futures.Future wherever callers can tell."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from cellos_sink_jetstream import _lean_future
from cellos_sink_jetstream._lean_future import (
    LeanFuture,
    _lean_future_matches_the_stock_one,
    make_future,
)
from tests._polling import wait_until


class _FutureWithAnExtra(concurrent.futures.Future):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__()
        self._cancel_reason = None


class _FutureRenamingState(concurrent.futures.Future):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__()
        self._state = "pending"


class _FutureWithAnotherCondition(concurrent.futures.Future):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__()
        self._condition = threading.Semaphore()  # type: ignore[assignment]


class _RLockWithoutReleaseSave:
    def _acquire_restore(self, state: Any) -> None:
        """The other private method, alone."""


def test_the_fit_check_refuses_a_future_whose_attributes_or_states_differ() -> None:
    assert _lean_future_matches_the_stock_one(concurrent.futures.Future)
    assert not _lean_future_matches_the_stock_one(_FutureWithAnExtra)
    assert not _lean_future_matches_the_stock_one(_FutureRenamingState)
    assert not _lean_future_matches_the_stock_one(_FutureWithAnotherCondition)


def test_the_fit_check_refuses_an_rlock_without_the_private_methods_wait_uses() -> None:
    assert not _lean_future_matches_the_stock_one(rlock=_RLockWithoutReleaseSave)


@pytest.mark.parametrize("fits", [True, False])
def test_make_future_falls_back_to_the_stock_future_when_the_check_fails(
    fits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lean_future, "_USE_LEAN", fits)
    future = make_future()
    assert type(future) is (LeanFuture if fits else concurrent.futures.Future)
    future.set_result(1)
    assert future.result(0) == 1


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

    def resolve_once_waited_on() -> None:
        # Resolve only once wait() below has registered its waiter, so the waiter path
        # (not the already-done shortcut) is what is tested.
        wait_until(lambda: lean._waiters, 5, "wait() never registered a waiter")  # type: ignore[attr-defined]
        lean.set_result(1)

    resolver = threading.Thread(target=resolve_once_waited_on)
    resolver.start()
    done, _ = concurrent.futures.wait(
        [lean, stock], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED
    )
    resolver.join(5)
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
