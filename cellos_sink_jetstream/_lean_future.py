"""A ``concurrent.futures.Future`` that is cheap to make and to keep.

``emit_nowait`` hands out one future per event, and a producer may hold thousands of them
at once. A stock ``Future`` builds a ``threading.Condition``: a reentrant lock, a deque and
five bound methods, all of which the garbage collector must trace for as long as the future
lives. Measured on the sink's benchmark, that was a fifth of the process's CPU time per
event, most of it in full collections.

:class:`LeanFuture` is a ``Future`` in every respect callers can see (``result``,
``cancel``, ``add_done_callback``, ``concurrent.futures.wait``, ``as_completed``,
``asyncio.wrap_future``); only its private condition is smaller: one object holding a
reentrant lock (``set_result`` re-enters it to build an error message), with a waiter
list made on first use. ``Future`` uses its condition in five ways (``with``,
``acquire``, ``release``, ``wait`` and ``notify_all``), the same from Python 3.9 to 3.13;
:func:`make_future` checks at import that ``Future`` still has the attributes this class
sets and a ``threading.Condition``, and that ``RLock`` still has the two private methods
``wait`` uses, and falls back to the stock class if not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar

__all__ = ["LeanFuture", "make_future"]

T = TypeVar("T")


class _LeanCondition:
    """What ``concurrent.futures.Future`` needs of its ``threading.Condition``."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self) -> None:
        # The C RLock: not traced by the garbage collector, unlike Condition's extras.
        self._lock = threading.RLock()
        self._waiters: Optional[list[Any]] = None

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: Optional[float] = None) -> bool:
        # As threading.Condition.wait: park on a fresh lock that notify_all releases.
        waiter = threading.Lock()
        waiter.acquire()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        saved = self._lock._release_save()  # type: ignore[attr-defined]  # however deep
        notified = False
        try:
            if timeout is None:
                notified = waiter.acquire()
            else:
                notified = waiter.acquire(True, max(0.0, timeout))
            return notified
        finally:
            self._lock._acquire_restore(saved)  # type: ignore[attr-defined]
            if not notified:
                with contextlib.suppress(ValueError):  # notified just after the timeout
                    self._waiters.remove(waiter)

    def notify_all(self) -> None:
        waiters = self._waiters
        if waiters:
            for waiter in waiters:
                waiter.release()
            waiters.clear()


class LeanFuture(concurrent.futures.Future[T]):
    """A ``concurrent.futures.Future`` with a lighter private condition (see the module)."""

    def __init__(self) -> None:
        self._condition = _LeanCondition()  # type: ignore[assignment]
        self._state = "PENDING"
        self._result: Optional[T] = None
        self._exception: Optional[BaseException] = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []


def _lean_future_matches_the_stock_one(
    stock_class: type[concurrent.futures.Future[Any]] = concurrent.futures.Future,
    rlock: Callable[[], Any] = threading.RLock,
) -> bool:
    # The stock constructor's attributes must be exactly the ones LeanFuture sets, its
    # condition a threading.Condition (what _LeanCondition stands in for), PENDING still
    # spelled "PENDING", and the RLock must still offer the two private methods wait()
    # uses; a future Python that changes any of these gets stock futures, which are
    # slower but always right.
    stock = vars(stock_class())
    lean = vars(LeanFuture())
    lock = rlock()
    return (
        stock.keys() == lean.keys()
        and stock["_state"] == lean["_state"]
        and type(stock["_condition"]) is threading.Condition
        and callable(getattr(lock, "_release_save", None))
        and callable(getattr(lock, "_acquire_restore", None))
    )


_USE_LEAN = _lean_future_matches_the_stock_one()


def make_future() -> concurrent.futures.Future[Any]:
    """A new pending future: a :class:`LeanFuture` where it is known to be safe."""
    return LeanFuture() if _USE_LEAN else concurrent.futures.Future()
