"""The cost of the OpenTelemetry integration on ``emit()``, on one nats-server it starts.

Run from the repository root (needs the ``test`` extra: opentelemetry-api and -sdk)::

    python benchmarks/otel_bench.py            # about 2 minutes on 2 cores
    python benchmarks/otel_bench.py --quick    # about 30 s

Ways, all through one sink (one connection, one loop thread, one subject), so that no way
gets a luckier connection or thread; the sink is instrumented with ``instrument(sink,
provider)`` on an SDK ``MeterProvider`` (an in-memory reader), and each way switches, per
block of emits, which ``emit`` it calls and whether the trace stamper is on:

* ``plain``: the class's ``emit()`` (not the instance's timing wrapper), no trace stamper:
  the sink without any of it;
* ``trace``: the trace stamper on (the ``trace_context=True`` default), no span current:
  what installing ``opentelemetry-api`` costs a caller that does not trace;
* ``metrics``: the instrumented ``emit()`` (its duration counted for the histogram), no
  stamper;
* ``metrics+trace``: both, no span current: the ``[otel]`` default;
* ``span``: the stamper inside a current span, so every event is stamped with
  ``traceparent`` (for information; no target);
* ``control``: ``plain`` again: its ratio to ``plain`` is how far two identical ways differ
  in this run, the noise floor of the comparison.

Each repeat sends ``--events`` serial ``emit()`` calls from one thread per way, finely
interleaved: 50 emits of one way, then 50 of the next, the order rotating per block, so a
burst of load from other processes hits every way alike. A way's figure is the median over
the repeats of its per-repeat p50 latency, with the spread (lowest and highest). The ratio
``metrics+trace``/``plain`` (and ``metrics``/``plain``) is taken per repeat, from runs
that ran back to back, and its median is checked against the target (<= 1.03).

Two in-process micro-measurements, without NATS, say where any difference comes from: the
wrapper that times ``emit()`` around a no-op, and the trace stamper with and without a span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Optional

import nats
from nats.js import api
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, instrument
from cellos_sink_jetstream._server import NatsServer
from cellos_sink_jetstream._trace import trace_stamper

STREAM = "OTEL_BENCH"
SUBJECT_ROOT = "otelbench"
TARGET_RATIO = 1.03
STAMPER = trace_stamper()
# Emits per way before the next way's turn (see main()).
BLOCK = 50


def make_event(i: int) -> CloudEventV1:
    """The supervisor lifecycle event of benchmarks/bench.py (~400 bytes), a fresh UUID id."""
    cell = f"cell-{i % 97:04d}"
    return CloudEventV1(
        id=str(uuid.uuid4()),
        source="/cellos/supervisor/node-07",
        type="dev.cellos.cell.lifecycle.started",
        subject=f"cells/{cell}",
        time=datetime.now(timezone.utc),
        datacontenttype="application/json",
        data={
            "cellId": cell,
            "tenantId": "acme-prod",
            "phase": "started",
            "generation": i,
            "image": "acme/worker:1.42.3",
            "pid": 40_000 + i % 20_000,
        },
        extensions={"tenantid": "acme-prod"},
    )


def admin(url: str, action: Any) -> Any:
    async def main() -> Any:
        nc = await nats.connect(url, name="otel-bench-admin", allow_reconnect=False)
        try:
            return await action(nc.jetstream(timeout=10.0))
        finally:
            await nc.close()

    return asyncio.run(main())


class Way(NamedTuple):
    timed: bool  # through instrument()'s emit() wrapper
    traced: bool  # the trace stamper on
    in_span: bool  # a span current in the emitting thread


WAYS = {
    "plain": Way(timed=False, traced=False, in_span=False),
    "trace": Way(timed=False, traced=True, in_span=False),
    "metrics": Way(timed=True, traced=False, in_span=False),
    "metrics+trace": Way(timed=True, traced=True, in_span=False),
    "span": Way(timed=False, traced=True, in_span=True),
    "control": Way(timed=False, traced=False, in_span=False),
}


def run_way(sink: JetStreamEventSink, way: Way, events: list[CloudEventV1]) -> list[int]:
    perf = time.perf_counter_ns
    # One sink for every way, so no way gets a luckier connection or thread: the class's
    # emit() bypasses the instance's timing wrapper, and the stamper is switched per block.
    emit = sink.emit if way.timed else functools.partial(JetStreamEventSink.emit, sink)
    sink._stamp_trace = STAMPER if way.traced else None
    latencies: list[int] = []
    append = latencies.append
    with contextlib.ExitStack() as scope:
        if way.in_span:
            scope.enter_context(trace.get_tracer("otel-bench").start_as_current_span("bench"))
        for event in events:
            t0 = perf()
            emit(event)
            append(perf() - t0)
    return latencies


def recorded_durations(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    return sum(
        point.count
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "messaging.client.operation.duration"
        for point in metric.data.data_points
    )


def p50(values: list[int]) -> float:
    return float(statistics.median(values))


def micro(loops: int) -> dict[str, float]:
    """ns per call of the emit() timing wrapper and of the trace stamper, no NATS."""

    class Nothing:
        def emit(self, event: Any) -> None:
            pass

        def stats(self) -> None:
            return None

    event = make_event(0)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = provider.get_meter("otel-bench").create_histogram("bench.duration", unit="s")
    attributes = {
        "messaging.system": "nats",
        "messaging.destination.template": "otelbench.{tenantId}",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
    }
    bare, timed = Nothing(), Nothing()
    instrument(timed, provider)
    stamp = trace_stamper()
    assert stamp is not None

    def per_call(call: Any) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter_ns()
            for _ in range(loops):
                call(event)
            best = min(best, (time.perf_counter_ns() - started) / loops)
        return best

    results = {
        "noop_emit_ns": per_call(bare.emit),
        "timed_noop_emit_ns": per_call(timed.emit),
        "sdk_histogram_record_ns": per_call(lambda _: histogram.record(0.0002, attributes)),
        "stamper_no_span_ns": per_call(stamp),
    }
    with TracerProvider().get_tracer("otel-bench").start_as_current_span("bench"):
        results["stamper_in_span_ns"] = per_call(stamp)
    results["timing_wrapper_ns"] = results["timed_noop_emit_ns"] - results["noop_emit_ns"]
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and events")
    parser.add_argument("--repeats", type=int, help="runs per way (default 15, --quick 5)")
    parser.add_argument("--events", type=int, help="emits per run (default 2000, --quick 1000)")
    parser.add_argument("--storage", default="file", choices=["file", "memory"])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    count = args.events or (1000 if args.quick else 2000)
    logging.getLogger("cellos_sink_jetstream").setLevel(logging.ERROR)
    trace.set_tracer_provider(TracerProvider())

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    pooled: dict[str, list[int]] = {way: [] for way in WAYS}
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        config = api.StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECT_ROOT}.>"],
            storage=api.StorageType(args.storage),
            duplicate_window=120.0,
        )
        admin(server.url, lambda js: js.add_stream(config))
        sink = JetStreamEventSink.connect(server.url, f"{SUBJECT_ROOT}.emit", stream=STREAM)
        instrument(sink, provider)
        for way in WAYS.values():  # warm-up
            run_way(sink, way, [make_event(i) for i in range(200)])
        log(f"nats-server at {server.client_url}; {repeats} repeats x {count} emits per way")
        for repeat in range(repeats):
            admin(server.url, lambda js: js.purge_stream(STREAM))
            latencies: dict[str, list[int]] = {way: [] for way in WAYS}
            # Interleaved finely: blocks of BLOCK emits per way in turn, the order rotating
            # per block, so load from other processes hits every way alike.
            for block in range(count // BLOCK):
                shift = block % len(WAYS)
                names = list(WAYS)
                for way in names[shift:] + names[:shift]:
                    events = [make_event(i) for i in range(BLOCK)]
                    latencies[way] += run_way(sink, WAYS[way], events)
            for way in WAYS:
                runs[way].append(p50(latencies[way]))
                pooled[way] += latencies[way]
            log(
                f"  repeat {repeat + 1}: "
                + ", ".join(f"{way} {runs[way][-1] / 1000:.1f}" for way in WAYS)
                + " (p50 us)"
            )
        sink.close()
    log("micro-measurements:")
    small = micro(20_000)

    def ratio(way: str) -> list[float]:
        return [a / b for a, b in zip(runs[way], runs["plain"])]

    table = {
        way: {
            "p50_us": statistics.median(values) / 1000,
            "p50_min_us": min(values) / 1000,
            "p50_max_us": max(values) / 1000,
            "ratio_to_plain": statistics.median(ratio(way)),
            "ratio_min": min(ratio(way)),
            "ratio_max": max(ratio(way)),
            "pooled_p50_us": p50(pooled[way]) / 1000,
            "pooled_ratio": p50(pooled[way]) / p50(pooled["plain"]),
        }
        for way, values in runs.items()
    }
    print(f"emit() 1 thread, {args.storage} storage, {repeats} repeats x {count} emits:")
    print(
        f"{'way':<15} {'p50 us':>8} {'spread us':>14} {'vs plain':>9} {'ratio spread':>13} "
        f"{'pooled p50':>11} {'vs plain':>9}"
    )
    for way, row in table.items():
        spread = f"{row['p50_min_us']:.1f}-{row['p50_max_us']:.1f}"
        ratios = f"{row['ratio_min']:.3f}-{row['ratio_max']:.3f}"
        print(
            f"{way:<15} {row['p50_us']:>8.1f} {spread:>14} {row['ratio_to_plain']:>8.3f}x "
            f"{ratios:>13} {row['pooled_p50_us']:>11.1f} {row['pooled_ratio']:>8.3f}x"
        )
    print(
        f"micro: emit() timing wrapper {small['timing_wrapper_ns']:.0f} ns/call (the SDK's "
        f"Histogram.record alone: {small['sdk_histogram_record_ns']:.0f} ns); trace "
        f"stamper {small['stamper_no_span_ns']:.0f} ns without a span, "
        f"{small['stamper_in_span_ns']:.0f} ns in one"
    )
    # Conservative: the worse of the two instrumented ways, by either estimate.
    worst = max(
        table[way][key]
        for way in ("metrics", "metrics+trace")
        for key in ("ratio_to_plain", "pooled_ratio")
    )
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    print(
        f"target: instrumented/plain p50 <= {TARGET_RATIO} (worst of metrics and "
        f"metrics+trace, median of per-repeat ratios and pooled) -> {worst:.3f}: {verdict}"
    )
    timed = sum(len(pooled[way]) for way, spec in WAYS.items() if spec.timed)
    assert recorded_durations(reader) >= timed  # the timed ways did go through instrument()
    if args.json:
        document = {"ways": table, "micro_ns": small, "repeats": repeats, "events": count}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
