"""Turning SIGINT and SIGTERM into a flag that long-running commands check."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Optional


@contextlib.contextmanager
def stop_requested_on_signals() -> Iterator[threading.Event]:
    """Turn SIGINT and SIGTERM into an event, for as long as the block runs.

    Off the main thread, where handlers cannot be installed, the event is never set.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request_stop(signum: int, frame: Optional[FrameType]) -> None:
        requested.set()

    watched = [signal.SIGINT, signal.SIGTERM]
    previous = {signum: signal.signal(signum, request_stop) for signum in watched}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
