"""Waiting for a condition that nothing signals (a server's state, another thread's
progress): poll it with a deadline, never sleep a fixed time in its place."""

from __future__ import annotations

import time
from typing import Callable

POLL_INTERVAL = 0.005


def wait_until(condition: Callable[[], object], timeout: float, message: str) -> None:
    """Poll ``condition`` until it is truthy; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout:g}s: {message}")
        time.sleep(POLL_INTERVAL)
