"""A sink's lifetime beyond its owner's calls: at exit, after a fork, when dropped.

* At exit, :func:`_close_all_at_exit` (an ``atexit`` hook) has every sink still open
  flush for at most its ``exit_timeout``; Ctrl-C stops the wait.
* In a forked child, :func:`_reinit_after_fork` has every sink start afresh on its next
  emit: the parent's thread and connection do not exist there.

The sink's own part of each (what it does with its state) stays in its methods.
* A sink garbage-collected without ``close()`` is closed by :func:`close_unreferenced`
  (its ``weakref.finalize``); :func:`weakly` keeps the loop thread's callbacks from
  keeping a dropped sink alive.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable

from typing_extensions import TypeVarTuple, Unpack

if TYPE_CHECKING:
    from ._runner import LoopRunner
    from ._sink import JetStreamEventSink

__all__ = [
    "ABANDONED_RUNNERS",
    "EXIT_WAIT_SLICE_SECONDS",
    "LIVE_SINKS",
    "THREAD_NAME",
    "close_unreferenced",
    "weakly",
]

logger = logging.getLogger("cellos_sink_jetstream")

#: The prefix of the threads that close a sink off its own thread ("...-close").
THREAD_NAME = "cellos-sink-jetstream"
#: Longest single wait of the exit flush (see JetStreamEventSink._close_at_exit).
EXIT_WAIT_SLICE_SECONDS = 0.1

#: Every sink not closed yet: flushed at exit, reset in a forked child.
LIVE_SINKS: weakref.WeakSet[JetStreamEventSink] = weakref.WeakSet()
# Kept alive after a fork so the child never runs their finalizers against a loop and
# locks that belong to a thread which does not exist in the child.
ABANDONED_RUNNERS: list[LoopRunner] = []

_Args = TypeVarTuple("_Args")


def weakly(method: Callable[[Unpack[_Args]], None]) -> Callable[[Unpack[_Args]], None]:
    """``method`` (bound) as a callback that holds its object weakly: a no-op once it is gone.

    What the loop thread calls back into the sink goes through this, so that the loop
    never keeps a sink alive that its owner dropped.
    """
    # A plain reference to the object and the function, positional arguments only: the
    # outcome hook runs once per event on the loop thread, where a WeakMethod (Python
    # code) and a keyword dict per call cost more than the hook itself.
    ref = weakref.ref(method.__self__)  # type: ignore[attr-defined]
    function = method.__func__  # type: ignore[attr-defined]

    def call(*args: Unpack[_Args]) -> None:
        owner = ref()
        if owner is not None:
            function(owner, *args)

    return call


def close_unreferenced(runner: LoopRunner, display_url: str, timeout: float) -> None:
    # A weakref.finalize callback: it may run on any thread, the loop's own included, in
    # the middle of whatever triggered the collection; so it only starts the closing.
    logger.warning(
        "a JetStreamEventSink for %s was garbage-collected without close(); closing it "
        "(events in flight get their outcome). Call close() or use it in a with block.",
        display_url,
    )
    try:
        threading.Thread(
            target=_close_runner_of_unreferenced,
            args=(runner, timeout),
            name=f"{THREAD_NAME}-close",
            daemon=True,
        ).start()
    except RuntimeError:  # the interpreter is shutting down: no new threads
        runner.stop(0.0)


def _close_runner_of_unreferenced(runner: LoopRunner, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    runner.wait_settled(max(0.0, timeout - min(0.5, timeout / 2)))
    runner.stop(max(0.0, deadline - time.monotonic()))


def _reinit_after_fork() -> None:
    for sink in list(LIVE_SINKS):
        sink._after_fork_in_child()


def _close_all_at_exit() -> None:
    # Runs before the interpreter tears down daemon threads, so pending publishes get
    # their outcome and no "Task was destroyed but it is pending" is printed. Each sink
    # waits at most its exit_timeout; Ctrl-C (in the main thread, which runs this) ends
    # the wait for all of them at once.
    sinks = [sink for sink in list(LIVE_SINKS) if not sink.closed]
    try:
        for sink in sinks:
            sink._close_at_exit()
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt):  # a third Ctrl-C: just go
            for sink in sinks:
                sink._abandon_at_exit()


atexit.register(_close_all_at_exit)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
