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
#: Polls in a row that ran out with nothing to read (acks slower than the budget: a
#: cluster's replication, a remote server) before busy_poll() requests are ignored ...
_MISSES_BEFORE_RESTING = 3
#: ... for this many of them; then it tries again.
_REQUESTS_IGNORED_WHILE_RESTING = 100


class BusyPollSelector(selectors.DefaultSelector):
    """The platform's default selector, plus :meth:`busy_poll`."""

    def __init__(self) -> None:
        super().__init__()
        self._poll_until = 0.0
        self._misses = 0
        self._requests_to_ignore = 0

    def busy_poll(self, seconds: float) -> None:
        """Let the next blocking :meth:`select` poll for up to ``seconds`` before it blocks.

        Once: the select after that blocks at once again, unless this is called anew.
        After a few polls in a row found nothing in time, the next requests are ignored:
        polling would only burn the CPU where the answers come later than ``seconds``.
        """
        if self._requests_to_ignore:
            self._requests_to_ignore -= 1
            return
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
                self._misses = 0
                return ready
            last, now = now, time.monotonic()
            if now >= poll_until:
                self._missed()
                break
            if now >= give_up or now - last > _CONTENDED_POLL_SECONDS:
                # A timer is due, or a slow round: another thread had the GIL (or the
                # CPU), so polling on would only take turns at it: block instead.
                break
        if timeout is None:
            return super().select(None)
        left = started + timeout - now
        return super().select(left) if left > 0 else []

    def _missed(self) -> None:
        self._misses += 1
        if self._misses >= _MISSES_BEFORE_RESTING:
            self._misses = 0
            self._requests_to_ignore = _REQUESTS_IGNORED_WHILE_RESTING
