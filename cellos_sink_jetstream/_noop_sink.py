"""The fallback sink: :class:`NoopEventSink` accepts every event and drops it."""

from __future__ import annotations

import threading

from typing_extensions import Self

from ._event import CloudEventV1
from ._sink_protocol import SinkStats

__all__ = ["NoopEventSink"]


class NoopEventSink:
    """The fallback sink: accepts every event and drops it, counting what it dropped.

    The supervisor degrades to it when JetStream is unreachable at startup (unless
    ``CELL_OS_REQUIRE_JETSTREAM`` is set) or when ``CELL_OS_USE_NOOP_SINK`` asks for it;
    :attr:`reason` says which, and :meth:`stats` how many events went nowhere.
    """

    def __init__(self, *, reason: str = "created directly") -> None:
        """Create a no-op sink; ``reason`` says why it is used (shown, so never a secret)."""
        self._reason = reason
        self._dropped = 0
        self._lock = threading.Lock()

    @property
    def reason(self) -> str:
        """Why this sink was chosen (the env opt-in, or the redacted connect error)."""
        return self._reason

    def emit(self, event: CloudEventV1) -> None:
        """Drop ``event`` (counted in :meth:`stats` as ``dropped``)."""
        with self._lock:
            self._dropped += 1

    def stats(self) -> SinkStats:
        """The same counters as :meth:`JetStreamEventSink.stats`: every emit is ``dropped``."""
        with self._lock:
            dropped = self._dropped
        return SinkStats(
            published=0,
            duplicates=0,
            failed=0,
            fast_failed=0,
            probes=0,
            breaker_openings=0,
            in_flight=0,
            queue_depth=0,
            dropped=dropped,
        )

    def close(self) -> None:
        """Do nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NoopEventSink(reason={self._reason!r})"
