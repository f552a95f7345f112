"""What the demo prints while it runs: stamped lines and circuit breaker transitions."""

from __future__ import annotations

import threading
import time
from typing import Callable

from .._breaker import BreakerState, Connected
from ._output import out


class Timeline:
    """Prints demo lines to stdout, stamped with seconds since the demo started."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        """Print one stamped line (thread-safe)."""
        with self._lock:
            out(f"[{time.monotonic() - self._started:6.2f}s] {text}")


def transition_printer(timeline: Timeline) -> Callable[[BreakerState, BreakerState], None]:
    def on_transition(old: BreakerState, new: BreakerState) -> None:
        if isinstance(new, Connected):
            timeline.say("breaker CLOSED: a probe was acknowledged, events flow again")
        elif isinstance(old, Connected):
            timeline.say(
                f"breaker OPEN: a publish failed; emits now fail fast with CircuitOpenError "
                f"(first probe in {max(0.0, new.next_after - time.monotonic()):.2f}s)"
            )
        else:
            timeline.say(
                f"breaker still open: probe {new.attempt} failed, next probe in "
                f"{max(0.0, new.next_after - time.monotonic()):.2f}s"
            )

    return on_transition
