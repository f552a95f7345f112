"""Trace context in every event: the CloudEvents distributed-tracing extension.

When ``opentelemetry-api`` is installed and a span is current in the thread that calls
``emit()``, the event gets that span's W3C ``traceparent`` (and ``tracestate`` when it is
not empty) as extension attributes, so a consumer can tie it to the request that caused it.
The context is read in the caller's thread: the sink's loop thread has none.

``opentelemetry-api`` stays optional: without it, or with ``trace_context=False``, the sink
holds no stamper at all and pays one ``is None`` test per event.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Optional

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
    span_or_none = _current_span_reader(trace)

    def stamp(event: CloudEventV1) -> CloudEventV1:
        span = span_or_none()
        if span is None:
            return event
        context = span.get_span_context()
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


def _current_span_reader(trace: Any) -> Callable[[], Any]:
    """A function returning the caller's current span, or ``None`` when there is none.

    Every emit() of a caller that does not trace asks, so the common answer ("none")
    should cost next to nothing. With OpenTelemetry's default runtime context (a
    ``ContextVar`` holding a mapping), one ``get`` answers it; those two names are private
    to ``opentelemetry-api``, so anything else falls back to ``trace.get_current_span()``,
    which does the same through five calls.
    """
    get_current_span = trace.get_current_span
    invalid = trace.INVALID_SPAN

    def public() -> Any:
        span = get_current_span()
        return None if span is invalid else span

    try:
        from opentelemetry.context import _RUNTIME_CONTEXT  # noqa: PLC0415
        from opentelemetry.trace.propagation import _SPAN_KEY  # noqa: PLC0415

        variable = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return public
    if not isinstance(variable, contextvars.ContextVar) or not isinstance(_SPAN_KEY, str):
        return public
    read = variable.get
    span_type = trace.Span

    def fast() -> Any:
        span = read().get(_SPAN_KEY)
        # Whatever get_current_span() would not return as is goes through it.
        return span if span is None or isinstance(span, span_type) else public()

    return fast
