"""OpenTelemetry metrics for a sink: observable instruments over ``stats()``, one histogram.

:func:`instrument` registers, once per ``MeterProvider``, instruments whose callbacks read
the counters every instrumented sink already keeps (``stats()``, ``debug_state()``), at
collection time: nothing is recorded per event except the duration of ``emit()``, which
is counted into buckets in place and handed to the SDK's histogram at collection.

Names and attributes follow OpenTelemetry's messaging semantic conventions where they
apply: ``messaging.system=nats`` and ``messaging.destination.template`` (the subject
template) on every series; never a per-tenant subject, tenant id or event id, so the number
of series stays bounded. Sinks with the same template add up into the same series.

``opentelemetry-api`` is optional: this module imports it only inside :func:`instrument`.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, NamedTuple, Optional

from ._breaker import Connected
from ._error_type import NOT_SENT, OTHER, error_type
from ._errors import ConfigError
from ._version import __version__

__all__ = ["DURATION_BUCKETS", "INSTRUMENTS", "METER_NAME", "instrument"]

#: The instrumentation scope's name (the meter's name).
METER_NAME = "cellos_sink_jetstream"

#: Histogram buckets of the emit() duration, in seconds: the messaging conventions'
#: boundaries (5 ms to 10 s) with finer ones below, where a healthy emit() lands.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

_SYSTEM = "messaging.system"
_TEMPLATE = "messaging.destination.template"
_OPERATION_NAME = "messaging.operation.name"
_OPERATION_TYPE = "messaging.operation.type"
_ERROR_TYPE = "error.type"

_SENT = "messaging.client.sent.messages"
_DURATION = "messaging.client.operation.duration"
_UNSENT = "cellos.sink.unsent"


class _Spec(NamedTuple):
    name: str
    kind: str
    unit: str
    description: str


#: Every instrument :func:`instrument` registers (the README's table is this one).
INSTRUMENTS = (
    _Spec(_SENT, "counter", "{message}",
          "Events the sink tried to send: acknowledged (no error.type) or failed "
          "(error.type says why)"),
    _Spec(_DURATION, "histogram", "s",
          "Duration of emit(), from the call to its return or raise (error.type on a raise)"),
    _Spec(_UNSENT, "counter", "{message}",
          "Events that failed without being sent: they waited in the queue until the caller "
          "gave up (abandoned), their deadline passed (backpressure) or the sink closed "
          "(closed)"),
    _Spec("cellos.sink.duplicates", "counter", "{message}",
          "Acknowledged events JetStream had already stored (same id)"),
    _Spec("cellos.sink.fast_failed", "counter", "{message}",
          "Emits refused by the open circuit; nothing was sent"),
    _Spec("cellos.sink.probes", "counter", "{probe}",
          "Probe publishes made while the circuit was open"),
    _Spec("cellos.sink.circuit.openings", "counter", "{opening}",
          "Times the circuit opened"),
    _Spec("cellos.sink.in_flight", "gauge", "{message}",
          "Events queued or awaiting their ack"),
    _Spec("cellos.sink.queue.depth", "gauge", "{message}",
          "Events waiting in the queue"),
    _Spec("cellos.sink.circuit.state", "gauge", "1",
          "0 while the circuit is closed, 1 while it is open"),
    _Spec("cellos.sink.spool.spooled", "counter", "{message}",
          "Events written to the spool (SpoolingEventSink only)"),
    _Spec("cellos.sink.spool.replayed", "counter", "{message}",
          "Spooled events JetStream acknowledged on replay (SpoolingEventSink only)"),
    _Spec("cellos.sink.spool.dead_lettered", "counter", "{message}",
          "Events JetStream refused for good (SpoolingEventSink only)"),
    _Spec("cellos.sink.spool.depth", "gauge", "{message}",
          "Events in the spool (SpoolingEventSink only)"),
)  # fmt: skip

_INSTALL_HINT = (
    "instrument() needs opentelemetry-api, which is not installed: "
    "pip install 'cellos-sink-jetstream[otel]'"
)

Attributes = Mapping[str, str]


class _Reading(NamedTuple):
    """What one sink's counters say at one collection."""

    attributes: Attributes
    stats: Any  # SinkStats (or anything with its fields), or None
    spool: Any  # SpoolStats-like, or None
    circuit_open: Optional[bool]


class _Watched:
    """One instrumented sink, held weakly: instrumenting never keeps a sink alive."""

    def __init__(self, sink: Any, attributes: Attributes) -> None:
        self._sink = weakref.ref(sink)
        self.attributes = attributes

    def sink(self) -> Any:
        return self._sink()

    def read(self) -> Optional[_Reading]:
        sink = self._sink()
        if sink is None:
            return None
        stats = sink.stats()
        # A wrapper (the spool) reports its own counters, and the wrapped sink's SinkStats
        # as `inner` (None when the wrapped sink keeps none).
        spool = None
        if hasattr(stats, "spooled"):
            spool, stats = stats, getattr(stats, "inner", None)
        circuit_open = None
        holder = _find(sink, "debug_state")
        if holder is not None:
            circuit_open = not isinstance(holder.debug_state(), Connected)
        return _Reading(self.attributes, stats, spool, circuit_open)


def _find(sink: Any, attribute: str) -> Any:
    """``sink`` or the sink it wraps (``inner``, depth-first) that has ``attribute``."""
    seen = 0
    while sink is not None and seen < 8:  # a wrapper chain, not a cycle
        if hasattr(sink, attribute):
            return sink
        sink = getattr(sink, "inner", None)
        seen += 1
    return None


class _Durations:
    """The emit() durations of one series since the last collection, aggregated in place.

    The SDK's ``Histogram.record`` costs 5-20 us per call (attribute cleaning and hashing,
    a measurement object, the exemplar filter), a tenth of a blocking emit(); adding to
    these buckets under a lock costs well under one. At collection the counts go to the
    SDK's histogram as values that rebuild the same aggregate exactly: the same count per
    bucket, the same sum per bucket, the same minimum and maximum.
    """

    __slots__ = ("_counts", "_high", "_lock", "_low", "_sums", "attributes")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = dict(attributes)
        self._lock = threading.Lock()
        self._counts = [0] * (len(DURATION_BUCKETS) + 1)
        self._sums = [0.0] * (len(DURATION_BUCKETS) + 1)
        self._low = math.inf
        self._high = -math.inf

    def add(self, seconds: float) -> None:
        """Count one duration (any thread)."""
        # The SDK's bucket rule: bucket i holds (bounds[i-1], bounds[i]].
        bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)
        with self._lock:
            self._counts[bucket] += 1
            self._sums[bucket] += seconds
            self._low = min(self._low, seconds)
            self._high = max(self._high, seconds)

    def drain(self, record: Callable[[float, Attributes], None]) -> None:
        """Hand what was counted since the last drain to ``record`` and start afresh."""
        with self._lock:
            counts, sums, low, high = self._counts, self._sums, self._low, self._high
            if not any(counts):
                return
            self._counts = [0] * len(counts)
            self._sums = [0.0] * len(sums)
            self._low, self._high = math.inf, -math.inf
        for bucket, count in enumerate(counts):
            if count:
                for value in _rebuild(bucket, count, sums[bucket], low, high):
                    record(value, self.attributes)


def _rebuild(bucket: int, count: int, total: float, low: float, high: float) -> list[float]:
    """``count`` values in ``bucket`` that add up to ``total``, with ``low``/``high`` if theirs."""
    floor = DURATION_BUCKETS[bucket - 1] if bucket > 0 else -math.inf
    ceiling = DURATION_BUCKETS[bucket] if bucket < len(DURATION_BUCKETS) else math.inf
    values: list[float] = []
    for extreme in (low, high):
        if floor < extreme <= ceiling and len(values) < count and extreme not in values:
            values.append(extreme)
    rest = count - len(values)
    if rest:
        # The mean of the other values lies in the bucket (and between low and high);
        # clamping only absorbs rounding.
        mean = (total - sum(values)) / rest
        mean = min(max(mean, math.nextafter(floor, math.inf), low), ceiling, high)
        values.extend([mean] * rest)
    return values


class _Registry:
    """The instruments of one ``MeterProvider`` and the sinks they report."""

    def __init__(self, meter: Any, observation: Callable[..., Any]) -> None:
        self._observation = observation
        self._lock = threading.Lock()
        self._watched: list[_Watched] = []
        self._durations: dict[tuple[tuple[str, str], ...], _Durations] = {}
        make = {
            "counter": meter.create_observable_counter,
            "gauge": meter.create_observable_gauge,
        }
        callbacks: dict[str, Callable[[Any], Iterable[Any]]] = {
            _SENT: self._sent,
            _UNSENT: self._unsent,
            "cellos.sink.duplicates": self._each(lambda r: r.stats.duplicates),
            "cellos.sink.fast_failed": self._each(lambda r: r.stats.fast_failed),
            "cellos.sink.probes": self._each(lambda r: r.stats.probes),
            "cellos.sink.circuit.openings": self._each(lambda r: r.stats.breaker_openings),
            "cellos.sink.in_flight": self._each(lambda r: r.stats.in_flight),
            "cellos.sink.queue.depth": self._each(lambda r: r.stats.queue_depth),
            "cellos.sink.circuit.state": self._circuit_state,
            "cellos.sink.spool.spooled": self._spool("spooled"),
            "cellos.sink.spool.replayed": self._spool("replayed"),
            "cellos.sink.spool.dead_lettered": self._spool("dead_lettered"),
            "cellos.sink.spool.depth": self._spool("depth"),
        }
        for spec in INSTRUMENTS:
            if spec.kind == "histogram":
                self.duration = _create_histogram(meter, spec)
            else:
                make[spec.kind](
                    spec.name,
                    callbacks=[callbacks[spec.name]],
                    unit=spec.unit,
                    description=spec.description,
                )

    def watch(self, sink: Any, attributes: Attributes) -> bool:
        """Add ``sink``; ``False`` if it is already reported here."""
        with self._lock:
            self._watched = [w for w in self._watched if w.sink() is not None]
            if any(w.sink() is sink for w in self._watched):
                return False
            self._watched.append(_Watched(sink, attributes))
            return True

    def durations(self, attributes: Attributes) -> _Durations:
        """The one aggregate of emit() durations of the series ``attributes``."""
        key = tuple(attributes.items())
        with self._lock:
            found = self._durations.get(key)
            if found is None:
                found = self._durations[key] = _Durations(attributes)
            return found

    def _readings(self) -> Iterator[_Reading]:
        # Every collection runs the callbacks before it reads the histogram: the first
        # one hands the histogram what emit() counted since the last collection.
        with self._lock:
            durations = list(self._durations.values())
        for aggregate in durations:
            aggregate.drain(self.duration.record)
        with self._lock:
            watched = list(self._watched)
        for one in watched:
            reading = one.read()
            if reading is not None:
                yield reading

    def _observe(self, points: Iterable[tuple[Attributes, float]], *, most: bool = False) -> Any:
        # Sinks with the same template share a series: their values add up (the
        # circuit state takes the most open one instead).
        totals: dict[tuple[tuple[str, str], ...], float] = {}
        for attributes, value in points:
            key = tuple(attributes.items())
            if key in totals:
                totals[key] = max(totals[key], value) if most else totals[key] + value
            else:
                totals[key] = value
        return [self._observation(value, dict(key)) for key, value in totals.items()]

    def _each(self, value_of: Callable[[_Reading], int]) -> Callable[[Any], Any]:
        def observe(options: Any) -> Any:
            return self._observe(
                (r.attributes, value_of(r)) for r in self._readings() if r.stats is not None
            )

        return observe

    def _spool(self, field: str) -> Callable[[Any], Any]:
        def observe(options: Any) -> Any:
            return self._observe(
                (r.attributes, getattr(r.spool, field))
                for r in self._readings()
                if r.spool is not None and isinstance(getattr(r.spool, field, None), int)
            )

        return observe

    def _circuit_state(self, options: Any) -> Any:
        readings = [r for r in self._readings() if r.circuit_open is not None]
        return self._observe(
            ((r.attributes, int(bool(r.circuit_open))) for r in readings), most=True
        )

    def _sent(self, options: Any) -> Any:
        def points() -> Iterator[tuple[Attributes, float]]:
            for reading in self._readings():
                publish = _publish_attributes(reading.attributes)
                stats = reading.stats
                if stats is None:
                    continue
                yield publish, stats.published
                by_cause: Mapping[str, int] = getattr(stats, "failed_by_cause", {})
                for cause, count in by_cause.items():
                    if cause not in NOT_SENT:  # those go to _UNSENT
                        yield {**publish, _ERROR_TYPE: cause}, count
                unexplained = stats.failed - sum(by_cause.values())
                if unexplained > 0:
                    yield {**publish, _ERROR_TYPE: OTHER}, unexplained

        return self._observe(points())

    def _unsent(self, options: Any) -> Any:
        def points() -> Iterator[tuple[Attributes, float]]:
            for reading in self._readings():
                by_cause: Mapping[str, int] = getattr(reading.stats, "failed_by_cause", {})
                for cause, count in by_cause.items():
                    if cause in NOT_SENT:
                        yield {**reading.attributes, _ERROR_TYPE: cause}, count

        return self._observe(points())


def _create_histogram(meter: Any, spec: _Spec) -> Any:
    """The duration histogram, with :data:`DURATION_BUCKETS` as the advised boundaries.

    ``opentelemetry-api`` takes the advice from 1.30 on; older versions (the extra allows
    1.24) refuse the argument, and get the SDK's default boundaries (or a View's).
    """
    try:
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
    except TypeError:
        return meter.create_histogram(spec.name, unit=spec.unit, description=spec.description)


def _publish_attributes(attributes: Attributes) -> dict[str, str]:
    return {**attributes, _OPERATION_NAME: "publish", _OPERATION_TYPE: "send"}


_REGISTRIES: weakref.WeakKeyDictionary[Any, _Registry] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def instrument(sink: Any, meter_provider: Any = None) -> None:
    """Report ``sink``'s counters as OpenTelemetry metrics (``pip install '...[otel]'``).

    Registers, on ``meter_provider`` (default: the global one of ``opentelemetry-api``),
    observable instruments fed from ``sink.stats()`` at collection time, and wraps
    ``sink.emit`` to record its duration in a histogram: the only per-event cost. Works for
    a :class:`JetStreamEventSink` and for wrappers whose ``stats()`` carries the wrapped
    sink's counters as ``inner`` (the spool, whose own counters are then reported too).
    Calling it again for the same sink and provider does nothing. The README's
    "Observability" section has the table of instruments.

    Raises:
        ConfigError: ``opentelemetry-api`` is not installed, ``sink`` has no ``stats()``
            and ``emit()``, or ``meter_provider`` is not a ``MeterProvider``.
    """
    try:
        from opentelemetry import metrics  # noqa: PLC0415  # optional dependency
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    if not callable(getattr(sink, "stats", None)) or not callable(getattr(sink, "emit", None)):
        raise ConfigError(
            f"instrument() needs a sink with stats() and emit(), got {type(sink).__name__}"
        )
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    if not callable(getattr(provider, "get_meter", None)):
        raise ConfigError(
            f"meter_provider must be an OpenTelemetry MeterProvider (or None for the global "
            f"one), got {type(provider).__name__}"
        )
    attributes: dict[str, str] = {_SYSTEM: "nats"}
    holder = _find(sink, "subject")
    if holder is not None and isinstance(holder.subject, str):
        attributes[_TEMPLATE] = holder.subject
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(provider)
        if registry is None:
            meter = provider.get_meter(METER_NAME, __version__)
            registry = _REGISTRIES[provider] = _Registry(meter, metrics.Observation)
    if registry.watch(sink, attributes):
        _time_emit(sink, registry, _publish_attributes(attributes))


def _time_emit(sink: Any, registry: _Registry, attributes: dict[str, str]) -> None:
    # The wrapper holds the sink, as the bound method it replaces does: a caller may keep
    # only `sink.emit` (a factory returning it). Kept in the sink's own attribute, that is
    # a reference cycle: a sink dropped without close() is closed when the cycle collector
    # finds it rather than at once. A sink instrumented for another provider already is
    # timed around that wrapper.
    earlier: Optional[Callable[[Any], None]] = getattr(sink, "__dict__", {}).get("emit")
    method = type(sink).emit
    clock = time.perf_counter
    succeeded = registry.durations(attributes).add
    failed: dict[str, Callable[[float], None]] = {}

    def timed_emit(event: Any) -> None:
        started = clock()
        try:
            if earlier is None:
                method(sink, event)
            else:
                earlier(event)
        except BaseException as exc:
            kind = error_type(exc)
            add = failed.get(kind)
            if add is None:
                add = failed[kind] = registry.durations({**attributes, _ERROR_TYPE: kind}).add
            add(clock() - started)
            raise
        succeeded(clock() - started)

    timed_emit.__doc__ = sink.emit.__doc__
    # An instance attribute: the class, and every sink not instrumented, stay as they are.
    sink.emit = timed_emit
