"""Trace context: the caller's OpenTelemetry span travels in the stored event."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from cellos_sink_jetstream import (
    CloudEventV1,
    ConfigError,
    InvalidEventError,
    JetStreamEventSink,
    SpoolingEventSink,
)
from cellos_sink_jetstream._trace import trace_stamper
from tests._nats import read_stream
from tests.conftest import StagedStream
from tests.fakes import InstantPublisher
from tests.test_event import events, extension_names, extension_values

TRACER = TracerProvider().get_tracer("cellos-sink-jetstream-tests")


def traceparent_of(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def event(n: int, **extensions: Any) -> CloudEventV1:
    return CloudEventV1(
        id=f"evt-{n}", source="/supervisor", type="cell.started", data={"n": n},
        extensions=extensions,
    )  # fmt: skip


def stored_bodies(stream: StagedStream) -> dict[str, dict[str, Any]]:
    return {
        body["id"]: body
        for body in (json.loads(msg.data) for msg in read_stream(stream.url, stream.name))
    }


def test_stored_events_carry_the_callers_span_only_when_there_is_one(
    stream: StagedStream,
) -> None:
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with JetStreamEventSink.connect(stream.url, stream.subject("trace")) as sink:
        with TRACER.start_as_current_span("handle-request") as span:
            sink.emit(event(1))
            sink.emit_nowait(event(2)).result(timeout=10)
            sink.publish(event(3))
            sink.emit(event(4, traceparent=own))
            expected = traceparent_of(span)
        sink.emit(event(5))
    bodies = stored_bodies(stream)
    for n in (1, 2, 3):
        assert bodies[f"evt-{n}"]["traceparent"] == expected
        assert "tracestate" not in bodies[f"evt-{n}"]  # the span's trace state is empty
        assert CloudEventV1.from_json(json.dumps(bodies[f"evt-{n}"])).data == {"n": n}
    assert bodies["evt-4"]["traceparent"] == own
    assert "traceparent" not in bodies["evt-5"]
    assert "tracestate" not in bodies["evt-5"]


def test_a_non_empty_trace_state_travels_as_tracestate(stream: StagedStream) -> None:
    parent = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]),
    )
    with JetStreamEventSink.connect(stream.url, stream.subject("state")) as sink:
        with trace.use_span(NonRecordingSpan(parent)):
            sink.emit(event(1))
            # An event that brought only its own trace state is left as it is, too.
            sink.emit(event(2, tracestate="mine=1"))
    bodies = stored_bodies(stream)
    assert bodies["evt-1"]["traceparent"] == (
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    assert bodies["evt-1"]["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert bodies["evt-2"]["tracestate"] == "mine=1"
    assert "traceparent" not in bodies["evt-2"]


def test_the_span_is_read_in_the_emitting_thread(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(stream.url, stream.subject("threads")) as sink:
        traceparents: dict[int, str] = {}

        def producer(n: int) -> None:
            with TRACER.start_as_current_span(f"worker-{n}") as span:
                traceparents[n] = traceparent_of(span)
                sink.emit(event(n))

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    bodies = stored_bodies(stream)
    assert len(set(traceparents.values())) == 4
    for n, traceparent in traceparents.items():
        assert bodies[f"evt-{n}"]["traceparent"] == traceparent


def test_trace_context_false_turns_it_off() -> None:
    publisher = InstantPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, "cellos.events.x", trace_context=False
    ) as sink:
        with TRACER.start_as_current_span("request"):
            sink.emit(event(1))
    assert "traceparent" not in json.loads(publisher.received[0][1])


def test_trace_context_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="trace_context"):
        JetStreamEventSink.from_publisher(InstantPublisher(), "cellos.events.x", trace_context=1)


@pytest.fixture
def without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


@pytest.mark.usefixtures("without_opentelemetry")
def test_without_opentelemetry_events_are_sent_unchanged() -> None:
    assert trace_stamper() is None
    publisher = InstantPublisher()
    with JetStreamEventSink.from_publisher(publisher, "cellos.events.x") as sink:
        sink.emit(event(1))
    assert json.loads(publisher.received[0][1]) == event(1).to_dict()


@given(events(), st.dictionaries(extension_names, extension_values, max_size=3))
def test_adding_extensions_equals_building_the_event_again(
    event: CloudEventV1, added: dict[str, Any]
) -> None:
    rebuilt = dataclasses.replace(event, extensions={**event.extensions, **added})
    fast = event._with_extensions(added)
    assert fast == rebuilt
    assert fast.to_json() == rebuilt.to_json()
    assert dict(fast.extensions) == dict(rebuilt.extensions)
    assert CloudEventV1.from_json(fast.to_json()) == CloudEventV1.from_json(rebuilt.to_json())


def test_added_extensions_are_validated() -> None:
    with pytest.raises(InvalidEventError, match="traceparent"):
        event(1)._with_extensions({"traceparent": "00-\r\n"})


class DelegatingRuntime:
    """A runtime context other than OpenTelemetry's default one (no ContextVar to read)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def attach(self, context: Any) -> Any:
        return self._real.attach(context)

    def get_current(self) -> Any:
        return self._real.get_current()

    def detach(self, token: Any) -> None:
        self._real.detach(token)


@pytest.mark.parametrize("runtime", ["default", "other"])
def test_the_current_span_is_found_whatever_the_runtime_context(
    runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opentelemetry.context

    if runtime == "other":
        real = opentelemetry.context._RUNTIME_CONTEXT  # type: ignore[attr-defined]
        monkeypatch.setattr(opentelemetry.context, "_RUNTIME_CONTEXT", DelegatingRuntime(real))
    stamp = trace_stamper()
    assert stamp is not None
    untouched = event(1)
    assert stamp(untouched) is untouched  # no span: the very same event
    with TRACER.start_as_current_span("request") as span:
        assert stamp(event(2)).extensions["traceparent"] == traceparent_of(span)
    assert "traceparent" not in stamp(event(3)).extensions


def test_in_binary_mode_the_trace_context_travels_as_ce_headers(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("binary"), content_mode="binary"
    ) as sink:
        with TRACER.start_as_current_span("request") as span:
            sink.emit(event(1))
    (message,) = read_stream(stream.url, stream.name)
    assert message.headers is not None
    assert message.headers["ce-traceparent"] == traceparent_of(span)
    stored = CloudEventV1.from_nats_message(message.headers, message.data)
    assert stored.extensions["traceparent"] == traceparent_of(span)


def test_an_event_that_waits_in_the_spool_keeps_the_callers_trace_context(
    stream: StagedStream, tmp_path: Path
) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("spooled"), publish_timeout=2.0, retry_attempts=1
    ) as inner:
        spool = SpoolingEventSink(inner, tmp_path / "spool")
        try:
            stream.server.stop()
            with TRACER.start_as_current_span("request") as span:
                spool.emit(event(1))  # NATS is down: spooled
            assert spool.stats().spooled == 1
            stream.server.start()
            assert spool.drain(timeout=60)  # replayed on the spool's thread, no span there
        finally:
            spool.close()
    (stored,) = stored_bodies(stream).values()
    assert stored["traceparent"] == traceparent_of(span)
