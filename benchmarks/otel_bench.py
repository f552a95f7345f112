"""The cost of the OpenTelemetry integration on ``emit()``, on one nats-server it starts.

Run from the repository root (needs the ``test`` extra: opentelemetry-api and -sdk)::

    python benchmarks/otel_bench.py            # about 2 minutes on 2 cores
    python benchmarks/otel_bench.py --quick    # about 30 s

Ways, each a sink of its own on its own subject of one stream, all in one process:

* ``plain``: ``trace_context=False``, not instrumented: the sink without any of it;
* ``trace``: the default ``trace_context=True``, no span current (what installing
  ``opentelemetry-api`` costs a caller that does not trace);
* ``metrics``: ``trace_context=False`` and ``instrument(sink, provider)`` on an SDK
  ``MeterProvider`` (an in-memory reader): the emit() duration histogram is recorded;
* ``metrics+trace``: both, no span current (the ``[otel]`` default);
* ``span``: ``trace_context=True`` inside a current span, so every event is stamped with
  ``traceparent`` (shown for information; no target).

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
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

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
WAYS = ("plain", "trace", "metrics", "metrics+trace", "span")
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


def run_way(sink: JetStreamEventSink, events: list[CloudEventV1], in_span: bool) -> list[int]:
    perf = time.perf_counter_ns
    emit = sink.emit
    latencies: list[int] = []
    append = latencies.append
    with contextlib.ExitStack() as scope:
        if in_span:
            scope.enter_context(trace.get_tracer("otel-bench").start_as_current_span("bench"))
        for event in events:
            t0 = perf()
            emit(event)
            append(perf() - t0)
    return latencies


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
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        config = api.StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECT_ROOT}.>"],
            storage=api.StorageType(args.storage),
            duplicate_window=120.0,
        )
        admin(server.url, lambda js: js.add_stream(config))
        sinks: dict[str, JetStreamEventSink] = {}
        for way in WAYS:
            subject = f"{SUBJECT_ROOT}.{way.replace('+', '_')}"
            sink = JetStreamEventSink.connect(
                server.url,
                subject,
                stream=STREAM,
                trace_context=way != "plain" and way != "metrics",
            )
            if way.startswith("metrics"):
                instrument(sink, provider)
            sinks[way] = sink
            run_way(sink, [make_event(i) for i in range(300)], way == "span")  # warm-up
        log(f"nats-server at {server.client_url}; {repeats} repeats x {count} emits per way")
        for repeat in range(repeats):
            admin(server.url, lambda js: js.purge_stream(STREAM))
            latencies: dict[str, list[int]] = {way: [] for way in WAYS}
            # Interleaved finely: blocks of BLOCK emits per way in turn, the order rotating
            # per block, so load from other processes hits every way alike.
            for block in range(count // BLOCK):
                shift = block % len(WAYS)
                for way in WAYS[shift:] + WAYS[:shift]:
                    events = [make_event(i) for i in range(BLOCK)]
                    latencies[way] += run_way(sinks[way], events, way == "span")
            for way in WAYS:
                runs[way].append(p50(latencies[way]))
            log(
                f"  repeat {repeat + 1}: "
                + ", ".join(f"{way} {runs[way][-1] / 1000:.1f}" for way in WAYS)
                + " (p50 us)"
            )
        for sink in sinks.values():
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
        }
        for way, values in runs.items()
    }
    print(f"emit() 1 thread, {args.storage} storage, {repeats} repeats x {count} emits:")
    print(f"{'way':<15} {'p50 us':>8} {'spread us':>16} {'vs plain':>9} {'ratio spread':>14}")
    for way, row in table.items():
        spread = f"{row['p50_min_us']:.1f}-{row['p50_max_us']:.1f}"
        ratios = f"{row['ratio_min']:.3f}-{row['ratio_max']:.3f}"
        print(
            f"{way:<15} {row['p50_us']:>8.1f} {spread:>16} {row['ratio_to_plain']:>8.3f}x "
            f"{ratios:>14}"
        )
    print(
        f"micro: emit() timing wrapper {small['timing_wrapper_ns']:.0f} ns/call (the SDK's "
        f"Histogram.record alone: {small['sdk_histogram_record_ns']:.0f} ns); trace "
        f"stamper {small['stamper_no_span_ns']:.0f} ns without a span, "
        f"{small['stamper_in_span_ns']:.0f} ns in one"
    )
    worst = max(table["metrics"]["ratio_to_plain"], table["metrics+trace"]["ratio_to_plain"])
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    print(f"target: instrumented/plain p50 <= {TARGET_RATIO} -> {worst:.3f}: {verdict}")
    data = reader.get_metrics_data()
    assert data is not None  # the histogram did record: the instrumented ways were real
    if args.json:
        document = {"ways": table, "micro_ns": small, "repeats": repeats, "events": count}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
