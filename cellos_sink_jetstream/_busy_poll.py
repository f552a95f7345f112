"""A selector that can busy-poll for a short while before it blocks.

Why: the sink's loop thread waits in ``epoll`` for every ack. On a VM whose idle vCPUs halt
(seen here: ``haltpoll`` with ``guest_halt_poll_ns=0``), a thread blocked there is woken
~40 µs after its socket became readable, and the sender pays an inter-processor
interrupt to wake it. While the lone publish of a thread that emits one event after the
other is in flight, that thread waits for its ack and no other is likely to want the GIL:
polling without blocking for a few hundred microseconds picks the ack up as it lands. The
runner asks for that (:meth:`BusyPollSelector.busy_poll`) only then.
"""

from __future__ import annotations

import selectors
import time
from typing import Optional

__all__ = ["BusyPollSelector"]

#: One non-blocking poll takes 1-3 µs; one that took longer waited for the GIL.
_CONTENDED_POLL_SECONDS = 50e-6


class BusyPollSelector(selectors.DefaultSelector):
    """The platform's default selector, plus :meth:`busy_poll`."""

    def __init__(self) -> None:
        super().__init__()
        self._poll_until = 0.0

    def busy_poll(self, seconds: float) -> None:
        """Let the next blocking :meth:`select` poll for up to ``seconds`` before it blocks.

        Once: the select after that blocks at once again, unless this is called anew.
        """
        self._poll_until = time.monotonic() + seconds

    def select(self, timeout: Optional[float] = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Like ``selectors.DefaultSelector.select``, polling first if :meth:`busy_poll` asked."""
        poll_until = self._poll_until
        if not poll_until or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        self._poll_until = 0.0
        started = time.monotonic()
        # The timeout still bounds the whole call: it is when the loop's next timer is due.
        give_up = poll_until if timeout is None else min(poll_until, started + timeout)
        now = started
        while True:
            ready = super().select(0)
            if ready:
                return ready
            last, now = now, time.monotonic()
            if now >= give_up or now - last > _CONTENDED_POLL_SECONDS:
                # A slow round: another thread had the GIL (or the CPU), so polling only
                # takes turns at it with that thread: block instead.
                break
        if timeout is None:
            return super().select(None)
        left = started + timeout - now
        return super().select(left) if left > 0 else []
