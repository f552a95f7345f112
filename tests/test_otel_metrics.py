"""OpenTelemetry metrics: each instrument moves as the events and the faults say.

The SDK's in-memory reader collects what ``instrument()`` registered; the sinks talk to
real nats-servers (the fixtures), except for the gauges of queued and in-flight events,
which need publishes held open (a gated fake publisher).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)

from cellos_sink_jetstream import (
    BackpressureError,
    CircuitOpenError,
    CloudEventV1,
    ConfigError,
    FailureCause,
    JetStreamEventSink,
    NoStreamError,
    PublishError,
    SinkError,
    SpoolingEventSink,
    instrument,
    with_retry,
)
from cellos_sink_jetstream._otel import DURATION_BUCKETS, INSTRUMENTS, _Durations
from tests._nats import read_stream, stage_stream
from tests._polling import wait_until
from tests._servers import frozen
from tests.conftest import StagedStream
from tests.fakes import GatedPublisher

TEMPLATE = "cellos.events.{tenantId}"
ALLOWED_ATTRIBUTES = {
    "messaging.system",
    "messaging.destination.template",
    "messaging.operation.name",
    "messaging.operation.type",
    "error.type",
}


class Metrics:
    """Collects from an in-memory reader and answers questions about the points."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.kinds: dict[str, type] = {}
        self.points: dict[str, list[Any]] = {}

    def collect(self) -> Metrics:
        data = self.reader.get_metrics_data()
        self.points = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name != "cellos_sink_jetstream":
                    continue  # some SDK versions report metrics of their own
                for metric in scope.metrics:
                    self.kinds[metric.name] = type(metric.data)
                    self.points[metric.name] = list(metric.data.data_points)
        return self

    def value(self, name: str, **attributes: str) -> float:
        """The sum of the points of ``name`` whose attributes include ``attributes``."""
        wanted = {key.replace("_", "."): value for key, value in attributes.items()}
        total = 0.0
        for point in self.points.get(name, []):
            assert isinstance(point, NumberDataPoint)
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                total += point.value
        return total

    def ok_sent(self) -> float:
        return sum(
            p.value
            for p in self.points.get("messaging.client.sent.messages", [])
            if "error.type" not in p.attributes
        )

    def errors(self, name: str = "messaging.client.sent.messages") -> dict[str, float]:
        found: dict[str, float] = {}
        for point in self.points.get(name, []):
            kind = point.attributes.get("error.type")
            if kind is not None:
                found[kind] = found.get(kind, 0) + (
                    point.count if isinstance(point, HistogramDataPoint) else point.value
                )
        return found

    def durations(self, error: Optional[str] = None) -> int:
        return sum(
            p.count
            for p in self.points.get("messaging.client.operation.duration", [])
            if p.attributes.get("error.type") == error
        )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def event(n: int, tenant: str = "acme") -> CloudEventV1:
    return CloudEventV1(
        id=f"evt-{n}", source="/supervisor", type="cell.started", data={"n": n},
        extensions={"tenantid": tenant},
    )  # fmt: skip


def assert_bounded_attributes(metrics: Metrics, template: str = TEMPLATE) -> None:
    for name, points in metrics.points.items():
        for point in points:
            assert set(point.attributes) <= ALLOWED_ATTRIBUTES, name
            assert point.attributes["messaging.system"] == "nats"
            assert point.attributes["messaging.destination.template"] == template
            for value in point.attributes.values():
                assert "acme" not in value
                assert "globex" not in value
                assert "evt-" not in value


def test_every_instrument_moves_with_events_and_a_server_restart(
    stream: StagedStream, metrics: Metrics
) -> None:
    server = stream.server
    with JetStreamEventSink.connect(
        stream.url, TEMPLATE, publish_timeout=2.0, retry_attempts=1
    ) as sink:
        instrument(sink, metrics.provider)
        for n, tenant in enumerate(["acme", "globex", "acme"]):
            sink.emit(event(n, tenant))
        sink.emit(event(0))  # a duplicate
        metrics.collect()
        assert metrics.ok_sent() == 4
        assert metrics.errors() == {}
        assert metrics.value("cellos.sink.duplicates") == 1
        assert metrics.durations() == 4
        assert metrics.value("cellos.sink.circuit.state") == 0
        assert metrics.value("cellos.sink.circuit.openings") == 0
        assert metrics.value("cellos.sink.in_flight") == 0
        assert metrics.value("cellos.sink.queue.depth") == 0

        server.stop()
        with pytest.raises(PublishError) as failure:
            sink.emit(event(10))
        with pytest.raises(CircuitOpenError):
            sink.emit(event(11))
        metrics.collect()
        cause = str(failure.value.cause)
        assert cause in {c.value for c in FailureCause}
        assert metrics.errors() == {cause: 1}
        assert metrics.value("cellos.sink.circuit.state") == 1
        assert metrics.value("cellos.sink.circuit.openings") == 1
        assert metrics.value("cellos.sink.fast_failed") == 1
        assert metrics.errors("messaging.client.operation.duration") == {
            cause: 1,
            "circuit_open": 1,
        }

        server.start()
        with_retry(100, lambda: sink.emit(event(12)), retry_on=(PublishError,), max_delay=0.2)
        metrics.collect()
        assert metrics.value("cellos.sink.circuit.state") == 0
        assert metrics.value("cellos.sink.circuit.openings") == 1
        assert metrics.value("cellos.sink.probes") >= 1
        assert metrics.ok_sent() == 5
        assert metrics.durations() == 5
        stats = sink.stats()
        assert metrics.value("cellos.sink.fast_failed") == stats.fast_failed
        assert metrics.value("cellos.sink.probes") == stats.probes
        assert sum(metrics.errors().values()) == stats.failed
    assert_bounded_attributes(metrics)


def test_a_missing_stream_is_counted_as_no_stream(stream: StagedStream, metrics: Metrics) -> None:
    with JetStreamEventSink.connect(stream.url, "nobody.listens.{tenantId}") as sink:
        instrument(sink, metrics.provider)
        with pytest.raises(NoStreamError):
            sink.emit(event(1))
    metrics.collect()
    assert metrics.errors() == {"no_stream": 1}
    assert (
        metrics.value(
            "messaging.client.sent.messages",
            messaging_destination_template="nobody.listens.{tenantId}",
        )
        == 1
    )
    assert sink.stats().failed_by_cause == {"no_stream": 1}


def test_in_flight_and_queue_depth_while_the_server_is_paused(
    stream: StagedStream, metrics: Metrics
) -> None:
    with JetStreamEventSink.connect(
        stream.url, TEMPLATE, max_in_flight=2, publish_timeout=30.0
    ) as sink:
        instrument(sink, metrics.provider)
        sink.emit(event(0))
        with frozen(stream.server):  # the server stops reading: acks wait
            futures = [sink.emit_nowait(event(n)) for n in range(1, 6)]
            wait_until(lambda: sink.stats().queue_depth == 3, 10, "two sent, three queued")
            metrics.collect()
            assert metrics.value("cellos.sink.in_flight") == 5
            assert metrics.value("cellos.sink.queue.depth") == 3
        for future in futures:
            future.result(timeout=30)
        metrics.collect()
    assert metrics.value("cellos.sink.in_flight") == 0
    assert metrics.value("cellos.sink.queue.depth") == 0
    assert metrics.ok_sent() == 6
    assert metrics.value("cellos.sink.circuit.state") == 0


def test_queue_depth_and_in_flight_gauges_follow_held_publishes(metrics: Metrics) -> None:
    publisher = GatedPublisher()
    with JetStreamEventSink.from_publisher(
        publisher, TEMPLATE, max_in_flight=1, retry_attempts=1
    ) as sink:
        instrument(sink, metrics.provider)
        futures = [sink.emit_nowait(event(n)) for n in range(3)]
        first = publisher.next_call()
        wait_until(lambda: sink.stats().queue_depth == 2, 5, "two events queued")
        metrics.collect()
        assert metrics.value("cellos.sink.in_flight") == 3
        assert metrics.value("cellos.sink.queue.depth") == 2
        first.ack(1)
        publisher.next_call().ack(2)
        publisher.next_call().fail()
        for future in futures[:2]:
            future.result(timeout=5)
        with pytest.raises(PublishError):
            futures[2].result(timeout=5)
        metrics.collect()
        assert metrics.value("cellos.sink.in_flight") == 0
        assert metrics.value("cellos.sink.queue.depth") == 0
        assert metrics.ok_sent() == 2
        assert metrics.errors() == {"jetstream_unavailable": 1}
        assert metrics.durations() == 0  # only emit() is timed


def test_instruments_kinds_units_and_buckets_are_as_documented(
    stream: StagedStream, metrics: Metrics
) -> None:
    with JetStreamEventSink.connect(stream.url, TEMPLATE) as sink:
        instrument(sink, metrics.provider)
        sink.emit(event(1))
    metrics.collect()
    expected = {"counter": Sum, "gauge": Gauge, "histogram": Histogram}
    spool_only = {spec.name for spec in INSTRUMENTS if spec.name.startswith("cellos.sink.spool.")}
    for spec in INSTRUMENTS:
        if spec.name in spool_only or spec.name == "cellos.sink.unsent":
            # No spool, no event failed unsent: no series (each has its error.type).
            assert spec.name not in metrics.points
            continue
        assert metrics.kinds[spec.name] is expected[spec.kind], spec.name
    (point,) = metrics.points["messaging.client.operation.duration"]
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS
    assert point.attributes == {
        "messaging.system": "nats",
        "messaging.destination.template": TEMPLATE,
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
    }
    assert 0 < point.sum < 10


def test_sinks_with_one_template_add_up_and_instrumenting_twice_counts_once(
    stream: StagedStream, metrics: Metrics
) -> None:
    with (
        JetStreamEventSink.connect(stream.url, TEMPLATE) as one,
        JetStreamEventSink.connect(stream.url, TEMPLATE) as two,
    ):
        instrument(one, metrics.provider)
        instrument(one, metrics.provider)
        instrument(two, metrics.provider)
        one.emit(event(1))
        two.emit(event(2))
        two.emit(event(3))
    metrics.collect()
    assert metrics.ok_sent() == 3
    assert metrics.durations() == 3


SMALL_TEMPLATE = "small.{tenantId}"


def test_the_spool_reports_spooled_replayed_dead_lettered_and_depth(
    stream: StagedStream, metrics: Metrics, tmp_path: Path
) -> None:
    # A stream that refuses messages over 2 KB for good: the spool dead-letters them.
    stage_stream(stream.url, "SMALL", ["small.>"], max_msg_size=2048)
    with JetStreamEventSink.connect(
        stream.url, SMALL_TEMPLATE, publish_timeout=2.0, retry_attempts=1
    ) as inner:
        spool = SpoolingEventSink(inner, tmp_path / "spool")
        try:
            instrument(spool, metrics.provider)
            spool.emit(event(1))
            spool.emit(CloudEventV1(id="big", source="/s", type="t", data="x" * 4096))
            metrics.collect()
            assert metrics.value("cellos.sink.spool.dead_lettered") == 1
            assert metrics.errors() == {"rejected": 1}
            assert metrics.value("cellos.sink.circuit.state") == 0  # a refusal is no outage

            stream.server.stop()
            spool.emit(event(2))
            spool.emit(event(3))
            metrics.collect()
            assert metrics.value("cellos.sink.spool.spooled") == 2
            assert metrics.value("cellos.sink.spool.depth") == 2
            assert metrics.value("cellos.sink.spool.replayed") == 0
            assert metrics.value("cellos.sink.circuit.state") == 1
            assert metrics.value("cellos.sink.circuit.openings") == 1

            stream.server.start()
            assert spool.drain(timeout=60)
            metrics.collect()
            assert metrics.value("cellos.sink.spool.replayed") == 2
            assert metrics.value("cellos.sink.spool.depth") == 0
            assert metrics.value("cellos.sink.circuit.state") == 0
            assert metrics.ok_sent() == 3  # 1 directly, 2 on replay
            assert metrics.durations() == 4  # the spool's emit(), which never raised
        finally:
            spool.close()
    assert_bounded_attributes(metrics, SMALL_TEMPLATE)


class StatslessSink:
    def emit(self, event: CloudEventV1) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_spool_over_a_sink_without_stats_reports_the_spool_only(
    metrics: Metrics, tmp_path: Path
) -> None:
    spool = SpoolingEventSink(StatslessSink(), tmp_path / "spool")
    try:
        instrument(spool, metrics.provider)
        spool.emit(event(1))
        metrics.collect()
    finally:
        spool.close()
    assert metrics.value("cellos.sink.spool.depth") == 0
    assert metrics.durations() == 1
    assert "messaging.client.sent.messages" not in metrics.points
    assert "cellos.sink.circuit.state" not in metrics.points


durations = st.lists(
    st.floats(min_value=0.0, max_value=20.0) | st.sampled_from(DURATION_BUCKETS),
    min_size=1,
    max_size=100,
)


def histogram_point(record: Callable[[Callable[..., None]], None]) -> HistogramDataPoint:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    histogram = provider.get_meter("t").create_histogram(
        "d", unit="s", explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS)
    )
    record(histogram.record)
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "t"
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    assert isinstance(point, HistogramDataPoint)
    return point


@given(durations)
def test_durations_counted_in_place_give_the_sdks_own_histogram(values: list[float]) -> None:
    labels = {"messaging.system": "nats"}

    def directly(record: Callable[..., None]) -> None:
        for value in values:
            record(value, labels)

    def aggregated(record: Callable[..., None]) -> None:
        aggregate = _Durations(labels)
        for value in values:
            aggregate.add(value)
        aggregate.drain(record)
        aggregate.drain(record)  # drained: nothing twice

    want, got = histogram_point(directly), histogram_point(aggregated)
    assert got.bucket_counts == want.bucket_counts
    assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
    assert got.sum == pytest.approx(want.sum, rel=1e-9, abs=1e-12)
    assert got.attributes == labels


def test_one_sink_reports_to_two_providers(stream: StagedStream) -> None:
    first, second = Metrics(), Metrics()
    with JetStreamEventSink.connect(stream.url, TEMPLATE) as sink:
        instrument(sink, first.provider)
        instrument(sink, second.provider)
        sink.emit(event(1))
        sink.emit(event(2))
    for metrics in (first.collect(), second.collect()):
        assert metrics.ok_sent() == 2
        assert metrics.durations() == 2


def test_instrumenting_keeps_no_sink_alive(stream: StagedStream, metrics: Metrics) -> None:
    sink = JetStreamEventSink.connect(stream.url, TEMPLATE)
    instrument(sink, metrics.provider)
    sink.emit(event(1))
    dropped = weakref.ref(sink)
    del sink
    gc.collect()
    assert dropped() is None
    metrics.collect()
    assert "messaging.client.sent.messages" not in metrics.points  # its series are gone
    assert metrics.durations() == 1  # what it recorded stays


def test_instrument_needs_a_sink_with_stats(metrics: Metrics) -> None:
    with pytest.raises(ConfigError, match="stats"):
        instrument(object(), metrics.provider)


def test_instrument_needs_a_meter_provider() -> None:
    with pytest.raises(ConfigError, match="meter_provider must be an OpenTelemetry"):
        instrument(SinkWithEmptyStats(), "prometheus")


class SinkWithEmptyStats(StatslessSink):
    def stats(self) -> None:
        return None


def test_without_opentelemetry_the_import_works_and_instrument_says_what_to_install() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed
        from cellos_sink_jetstream import ConfigError, NoopEventSink, instrument
        try:
            instrument(NoopEventSink())
        except ConfigError as exc:
            print(exc)
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert "pip install 'cellos-sink-jetstream[otel]'" in lines[0]
    assert lines[1] == "['opentelemetry']"


def test_events_never_sent_are_not_counted_as_sent_messages(
    stream: StagedStream, metrics: Metrics
) -> None:
    # The conventions: messaging.client.sent.messages "MUST NOT count messages that were
    # created but haven't yet been sent". One the caller gave up on while it waited in the
    # queue (abandoned) was never sent: it is counted by cellos.sink.unsent instead.
    with JetStreamEventSink.connect(
        stream.url, TEMPLATE, max_in_flight=1, publish_timeout=30.0
    ) as sink:
        instrument(sink, metrics.provider)
        with frozen(stream.server):  # the server stops reading: the first ack waits
            held = sink.emit_nowait(event(1))
            with pytest.raises(BackpressureError):
                sink.publish(event(2), timeout=0.2)  # gives up while queued behind it
        held.result(timeout=30)
        assert sink.flush(30)
        wait_until(lambda: sink.stats().failed == 1, 10, "the abandoned event counted")
        assert sink.stats().failed_by_cause == {"abandoned": 1}
        metrics.collect()
    assert metrics.ok_sent() == 1
    assert metrics.errors() == {}
    assert metrics.errors("cellos.sink.unsent") == {"abandoned": 1}
    assert_bounded_attributes(metrics)


def test_events_the_sink_closed_before_sending_are_counted_unsent(metrics: Metrics) -> None:
    publisher = GatedPublisher()
    sink = JetStreamEventSink.from_publisher(publisher, TEMPLATE, max_in_flight=1)
    instrument(sink, metrics.provider)
    futures = [sink.emit_nowait(event(n)) for n in range(3)]
    publisher.next_call()  # held: never answered
    wait_until(lambda: sink.stats().queue_depth == 2, 5, "two events queued")
    sink.close(timeout=0.5)
    for future in futures:
        with pytest.raises(SinkError):
            future.result(timeout=5)
    causes = sink.stats().failed_by_cause
    metrics.collect()
    assert causes["closed"] == 2  # the queued two were never sent
    assert "closed" not in metrics.errors()
    assert metrics.errors("cellos.sink.unsent") == {"closed": 2}
    assert sum(metrics.errors().values()) == sum(causes.values()) - 2


class _MeterBefore130:
    """A meter of opentelemetry-api < 1.30 (the extra allows 1.24): ``create_histogram``
    has no ``explicit_bucket_boundaries_advisory`` yet."""

    def __init__(self, meter: Any) -> None:
        self._meter = meter

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._meter.create_histogram(name, unit=unit, description=description)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


class _ProviderBefore130:
    def __init__(self, provider: MeterProvider) -> None:
        self._provider = provider

    def get_meter(self, name: str, version: Optional[str] = None) -> Any:
        return _MeterBefore130(self._provider.get_meter(name, version))


def test_an_opentelemetry_api_older_than_1_30_gets_the_sdks_default_buckets(
    stream: StagedStream, metrics: Metrics
) -> None:
    with JetStreamEventSink.connect(stream.url, TEMPLATE) as sink:
        instrument(sink, _ProviderBefore130(metrics.provider))
        sink.emit(event(1))
    metrics.collect()
    assert metrics.ok_sent() == 1
    assert metrics.durations() == 1
    (point,) = metrics.points["messaging.client.operation.duration"]
    assert tuple(point.explicit_bounds) != DURATION_BUCKETS  # no advisory: the SDK's own


def test_an_instrumented_emit_held_alone_keeps_its_sink_as_a_bound_method_does(
    stream: StagedStream, metrics: Metrics
) -> None:
    # emit = sink.emit, the sink itself dropped (a factory returning the callable): a plain
    # sink's bound method keeps the sink alive, so the instrumented emit must too.
    def make_emitter() -> Callable[[CloudEventV1], None]:
        sink = JetStreamEventSink.connect(stream.url, TEMPLATE)
        instrument(sink, metrics.provider)
        return sink.emit

    emit = make_emitter()
    gc.collect()
    emit(event(1))
    metrics.collect()
    assert metrics.ok_sent() == 1
    assert metrics.durations() == 1
    [stored] = read_stream(stream.url, stream.name)
    assert json.loads(stored.data)["id"] == "evt-1"
    del emit
    gc.collect()  # the sink goes with its emit (and its finalizer closes it)
    metrics.collect()
    assert "messaging.client.sent.messages" not in metrics.points
