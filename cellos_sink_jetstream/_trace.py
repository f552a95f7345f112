"""Trace context in every event: the CloudEvents distributed-tracing extension.

When ``opentelemetry-api`` is installed and a span is current in the thread that calls
``emit()``, the event gets that span's W3C ``traceparent`` (and ``tracestate`` when it is
not empty) as extension attributes, so a consumer can tie it to the request that caused it.
The context is read in the caller's thread: the sink's loop thread has none.

``opentelemetry-api`` stays optional: without it, or with ``trace_context=False``, the sink
holds no stamper at all and pays one ``is None`` test per event.
"""

from __future__ import annotations

from typing import Callable, Optional

from ._event import CloudEventV1, ExtensionValue

__all__ = ["TRACEPARENT", "TRACESTATE", "TraceStamper", "trace_stamper"]

#: Extension attribute names of the CloudEvents distributed-tracing extension.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: Returns the event with the caller's trace context added, or the event itself.
TraceStamper = Callable[[CloudEventV1], CloudEventV1]


def trace_stamper() -> Optional[TraceStamper]:
    """The stamper over ``opentelemetry-api``, or ``None`` when it is not installed."""
    try:
        from opentelemetry import trace  # noqa: PLC0415  # optional dependency
    except ImportError:
        return None
    get_current_span = trace.get_current_span

    def stamp(event: CloudEventV1) -> CloudEventV1:
        # Without a current span this is a context-variable read and a flag test.
        context = get_current_span().get_span_context()
        if not context.is_valid:
            return event
        extensions = event.extensions
        # An event that brought its own trace context keeps it, whole.
        if TRACEPARENT in extensions or TRACESTATE in extensions:
            return event
        added: dict[str, ExtensionValue] = {}
        # The W3C Trace Context header, as OpenTelemetry's own propagator writes it.
        added[TRACEPARENT] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
        tracestate = context.trace_state.to_header()
        if tracestate:
            added[TRACESTATE] = tracestate
        return event._with_extensions(added)

    return stamp
