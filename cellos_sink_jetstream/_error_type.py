"""One low-cardinality word per failure, for ``SinkStats.failed_by_cause`` and metrics.

OpenTelemetry's ``error.type`` attribute wants a predictable, bounded set of values; so
does a per-cause counter. The sink's own :class:`~cellos_sink_jetstream.FailureCause`
values are used where the error carries one, then one word per error class.
"""

from __future__ import annotations

from typing import Optional

from ._errors import (
    BackpressureError,
    CircuitOpenError,
    FailureCause,
    InvalidEventError,
    InvalidSubjectError,
    PayloadTooLargeError,
    PublishError,
    SinkClosedError,
    StreamMismatchError,
)

__all__ = ["ABANDONED", "NOT_SENT", "OTHER", "error_type"]

#: The caller gave up while its event still waited in the queue: it was never sent.
ABANDONED = "abandoned"
#: Anything not named below (OpenTelemetry's own fallback value for ``error.type``).
OTHER = "_OTHER"
#: The words of failures whose event never left the queue (abandoned, its deadline passed
#: in the queue, the sink closed first). The messaging conventions' sent-messages counter
#: must not count these, so the metrics report them on a counter of their own.
NOT_SENT = frozenset({ABANDONED, "backpressure", "closed"})

# Most specific first: PayloadTooLargeError is an InvalidEventError, CircuitOpenError and
# StreamMismatchError are PublishErrors.
_BY_CLASS: tuple[tuple[type[BaseException], str], ...] = (
    (CircuitOpenError, "circuit_open"),
    (StreamMismatchError, "stream_mismatch"),
    (PayloadTooLargeError, "payload_too_large"),
    (InvalidEventError, "invalid_event"),
    (InvalidSubjectError, "invalid_subject"),
    (BackpressureError, "backpressure"),
    (SinkClosedError, "closed"),
)


def error_type(error: Optional[BaseException]) -> str:
    """The word for ``error``: ``connection_down``, ``no_stream``, ``circuit_open``, ...

    ``None`` (the caller gave up before the event was sent) is :data:`ABANDONED`.
    """
    if error is None:
        return ABANDONED
    for kind, word in _BY_CLASS:
        if isinstance(error, kind):
            return word
    if isinstance(error, PublishError):
        if error.permanent:  # JetStream refused this very message for good
            return "rejected"
        # As the breaker counts it: a PublishError without a cause is "JetStream unavailable".
        return str(error.cause or FailureCause.JETSTREAM_UNAVAILABLE)
    return OTHER
