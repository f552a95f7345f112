"""What every sink is: the :class:`EventSink` protocol, what ``emit`` accepts, the stats.

:class:`JetStreamEventSink`, :class:`NoopEventSink` and the spooling sink all take
:data:`EventLike` events and report their counters as :class:`SinkStats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from typing_extensions import Protocol, runtime_checkable

from ._event import CloudEventV1, SdkEvent

__all__ = ["EventLike", "EventSink", "SinkStats"]

#: What ``emit`` accepts: a :class:`CloudEventV1`, a mapping in CloudEvents JSON form, or an
#: event of the ``cloudevents`` SDK (matched structurally, so that SDK stays optional).
EventLike = Union[CloudEventV1, Mapping[str, Any], SdkEvent]


@runtime_checkable
class EventSink(Protocol):
    """Anything that takes CloudEvents: the JetStream sink, the no-op sink, wrappers."""

    def emit(self, event: CloudEventV1) -> None:
        """Deliver ``event`` or raise."""
        ...

    def close(self) -> None:
        """Release resources; further ``emit`` calls fail."""
        ...


@dataclass(frozen=True)
class SinkStats:
    """Counters of one sink since it was created (a snapshot).

    Attributes:
        published: Events JetStream acknowledged (duplicates included).
        duplicates: Acknowledged events JetStream had already stored (same ``id``).
        failed: Events that were sent or queued but not acknowledged.
        fast_failed: Emits refused by the open circuit without touching the queue.
        probes: Probe publishes made while the circuit was open.
        breaker_openings: Times the circuit went from ``Connected`` to ``Reconnecting``.
        in_flight: Events queued or awaiting their ack right now.
        queue_depth: Events waiting in the queue right now.
        dropped: Events accepted and thrown away (only :class:`NoopEventSink` drops).
        failed_by_cause: ``failed`` split by cause: ``connection_down``, ``no_stream``,
            ``jetstream_unavailable``, ``timeout`` (the :class:`FailureCause` values),
            ``stream_mismatch``, ``rejected`` (refused for good), ``backpressure``,
            ``closed``, ``abandoned`` (the caller gave up while the event was queued),
            ``payload_too_large``; only causes seen.
    """

    published: int
    duplicates: int
    failed: int
    fast_failed: int
    probes: int
    breaker_openings: int
    in_flight: int
    queue_depth: int
    dropped: int = 0
    failed_by_cause: Mapping[str, int] = field(default_factory=dict, hash=False)
