"""Benchmark the sink against raw nats-py, on one real nats-server this script starts.

Run from the repository root::

    python benchmarks/bench.py            # full run, a few minutes on 2 cores
    python benchmarks/bench.py --quick    # about a minute
    python benchmarks/bench.py --json out.json

What is measured, with ~400-byte CloudEvents of a supervisor lifecycle event (every event
has a fresh UUID as its id, so JetStream's duplicate detection never answers for free):

* raw nats-py in its own asyncio loop: ``await js.publish()`` serially, with 8 in flight
  and with 256 in flight (a semaphore bounding one task per publish);
* a naive sync facade: a background loop thread plus
  ``asyncio.run_coroutine_threadsafe(js.publish(...), loop).result()``, from 1 and 8
  threads;
* the sink: ``emit()`` from 1 and 8 threads, ``emit_nowait()`` + ``flush()`` from 1 thread;
* the fast-fail path: ``emit()`` on a sink whose circuit is held open, against a bare
  ``with lock: raise SomeError()`` loop caught the same way;
* memory: the process RSS after 20,000 and after 200,000 events through ``emit_nowait``
  with a ``flush`` every 1,000;
* the hand-off floor: an empty round trip from a caller thread to an asyncio loop thread
  and back (``call_soon_threadsafe`` of a lock release), the mechanism under every
  blocking ``emit()``; ``emit()`` cannot be faster than raw serial plus this.

The throughput ways run once against a file-storage stream and once against a
memory-storage stream, interleaved and repeated (``--repeats``); the reported figure of
each way is the median over the repeats. Every way publishes the same bytes: the payload
is ``event.to_json()`` (serialised inside the timed loop, as the sink does), with the
headers the sink sends (``Nats-Msg-Id``, ``Content-Type``, ``Nats-Expected-Stream``).
Each measurement gets its own subject and starts on a purged stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api

# Runnable as a plain script from a checkout: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    JetStreamEventSink,
    PubAck,
    PublishError,
    Reconnecting,
)
from cellos_sink_jetstream._server import NatsServer, find_nats_server_binary

CONTENT_TYPE = "application/cloudevents+json"
SUBJECT_ROOT = "bench"
FLUSH_TIMEOUT = 120.0

# The project's targets, checked at the end: (name, comparison, threshold).
TARGET_EMIT_LATENCY = 1.2  # emit() 1 thread p50 / raw serial p50        <=
TARGET_EMIT_8T = 0.8  # emit() 8 threads events/s / raw 8 in flight   >=
TARGET_NOWAIT = 1.0  # emit_nowait+flush events/s / raw 256 in flight >=
TARGET_FAST_FAIL = 3.0  # fast-fail median / bare lock-and-raise median  <
TARGET_RSS_MB = 10.0  # RSS(200k) - RSS(20k), MB                        <


# -- plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many events each measurement uses."""

    warmup: int
    serial: int  # ways with one publish in flight per thread and one thread
    concurrent: int  # 8 threads / 8 in flight
    bulk: int  # 256 in flight / emit_nowait
    repeats: int
    fast_fail_batches: int
    fast_fail_batch: int
    memory_small: int
    memory_large: int
    memory_flush_every: int
    handoff_rounds: int

    @classmethod
    def make(cls, quick: bool, repeats: Optional[int], scale: float) -> Plan:
        def n(count: int) -> int:
            return max(100, int(count * scale))

        if quick:
            return cls(
                warmup=n(300),
                serial=n(1_500),
                concurrent=n(4_000),
                bulk=n(8_000),
                repeats=repeats or 1,
                fast_fail_batches=200,
                fast_fail_batch=200,
                memory_small=20_000,
                memory_large=200_000,
                memory_flush_every=1_000,
                handoff_rounds=2_000,
            )
        return cls(
            warmup=n(1_000),
            serial=n(5_000),
            concurrent=n(16_000),
            bulk=n(40_000),
            repeats=repeats or 3,
            fast_fail_batches=1_000,
            fast_fail_batch=500,
            memory_small=20_000,
            memory_large=200_000,
            memory_flush_every=1_000,
            handoff_rounds=10_000,
        )


# -- events -------------------------------------------------------------------------------

_PHASES = ("created", "starting", "started", "healthy", "stopping", "stopped")


def make_event(i: int) -> CloudEventV1:
    """A realistic supervisor lifecycle event (~400 bytes of JSON) with a fresh UUID id."""
    cell = f"cell-{i % 97:04d}"
    phase = _PHASES[i % len(_PHASES)]
    return CloudEventV1(
        id=str(uuid.uuid4()),
        source="/cellos/supervisor/node-07",
        type=f"dev.cellos.cell.lifecycle.{phase}",
        subject=f"cells/{cell}",
        time=datetime.now(timezone.utc),
        datacontenttype="application/json",
        data={
            "cellId": cell,
            "tenantId": "acme-prod",
            "phase": phase,
            "generation": i,
            "image": "acme/worker:1.42.3",
            "pid": 40_000 + i % 20_000,
        },
        extensions={"tenantid": "acme-prod"},
    )


def make_events(count: int, start: int = 0) -> list[CloudEventV1]:
    return [make_event(start + i) for i in range(count)]


def headers_for(event: CloudEventV1) -> dict[str, str]:
    # The sink sends these plus Nats-Expected-Stream, which js.publish(stream=...) adds.
    return {"Content-Type": CONTENT_TYPE, "Nats-Msg-Id": event.id}


# -- samples ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[round(q * (len(sorted_values) - 1))])


@dataclass
class Sample:
    """One timed run of one way."""

    events: int
    seconds: float
    latencies_ns: list[int] = field(repr=False)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ns)
        return {
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.events_per_s, 1),
            "p50_us": round(percentile(ordered, 0.50) / 1e3, 2),
            "p99_us": round(percentile(ordered, 0.99) / 1e3, 2),
        }


@dataclass(frozen=True)
class Target:
    """Where a measurement runs: the server and the stream staged on it."""

    url: str
    stream: str
    storage: str

    def subject(self, way: str) -> str:
        return f"{SUBJECT_ROOT}.{self.storage}.{way}"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best we have (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# -- JetStream administration -------------------------------------------------------------


def _admin(url: str, action: Callable[[JetStreamContext], Any]) -> Any:
    async def main() -> Any:
        nc = await nats.connect(url, name="bench-admin", allow_reconnect=False)
        try:
            return await action(nc.jetstream(timeout=10.0))
        finally:
            await nc.close()

    return asyncio.run(main())


def stage_stream(url: str, name: str, storage: str) -> Target:
    config = api.StreamConfig(
        name=name,
        subjects=[f"{SUBJECT_ROOT}.{storage}.>"],
        storage=api.StorageType(storage),
        duplicate_window=120.0,
    )
    _admin(url, lambda js: js.add_stream(config))
    return Target(url, name, storage)


def purge(target: Target) -> None:
    _admin(target.url, lambda js: js.purge_stream(target.stream))


# -- raw nats-py baselines (their own asyncio loop) ----------------------------------------


async def _raw_publish(
    js: JetStreamContext, subject: str, stream: str, event: CloudEventV1
) -> api.PubAck:
    ack = await js.publish(subject, event.to_json(), stream=stream, headers=headers_for(event))
    if ack.duplicate:
        raise RuntimeError("JetStream reported a duplicate: event ids are not unique")
    return ack


async def _raw_window(
    js: JetStreamContext, subject: str, stream: str, events: list[CloudEventV1], window: int
) -> Sample:
    latencies: list[int] = []
    perf = time.perf_counter_ns
    started = time.perf_counter()
    if window == 1:
        for event in events:
            t0 = perf()
            await _raw_publish(js, subject, stream, event)
            latencies.append(perf() - t0)
    else:
        slots = asyncio.Semaphore(window)

        async def one(event: CloudEventV1) -> None:
            t0 = perf()
            try:
                await _raw_publish(js, subject, stream, event)
            finally:
                slots.release()
            latencies.append(perf() - t0)

        tasks = []
        for event in events:
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(event)))
        await asyncio.gather(*tasks)
    return Sample(len(events), time.perf_counter() - started, latencies)


def raw_js_publish(
    window: int,
) -> Callable[[Target, str, list[CloudEventV1], list[CloudEventV1]], Sample]:
    def run(
        target: Target, subject: str, warm: list[CloudEventV1], events: list[CloudEventV1]
    ) -> Sample:
        async def main() -> Sample:
            nc: Client = await nats.connect(target.url, name="bench-raw", allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=10.0)
                await _raw_window(js, subject, target.stream, warm, window)
                gc.collect()
                return await _raw_window(js, subject, target.stream, events, window)
            finally:
                await nc.close()

        return asyncio.run(main())

    return run


# -- threads driving a blocking call --------------------------------------------------------


def drive_threads(
    threads: int, events: list[CloudEventV1], call: Callable[[CloudEventV1], object]
) -> Sample:
    """Call ``call(event)`` for every event from ``threads`` threads (the caller if 1)."""
    chunks = [events[i::threads] for i in range(threads)]
    latencies: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    perf = time.perf_counter_ns

    def work(index: int) -> None:
        out = latencies[index]
        try:
            for event in chunks[index]:
                t0 = perf()
                call(event)
                out.append(perf() - t0)
        except BaseException as exc:
            errors.append(exc)

    if threads == 1:
        started = time.perf_counter()
        work(0)
        seconds = time.perf_counter() - started
    else:
        gate = threading.Barrier(threads + 1)

        def gated(index: int) -> None:
            gate.wait()
            work(index)

        workers = [
            threading.Thread(target=gated, args=(i,), name=f"bench-{i}") for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        gate.wait()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Sample(len(events), seconds, [x for chunk in latencies for x in chunk])


# -- the naive sync facade ------------------------------------------------------------------


class NaiveFacade:
    """What one writes first: a loop thread plus ``run_coroutine_threadsafe(...).result()``."""

    def __init__(self, url: str, stream: str) -> None:
        self._stream = stream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-naive-loop")
        self._thread.start()
        self._nc: Client = self._call(nats.connect(url, name="bench-naive", allow_reconnect=False))
        self._js = self._nc.jetstream(timeout=10.0)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, subject: str, event: CloudEventV1) -> api.PubAck:
        return self._call(_raw_publish(self._js, subject, self._stream, event))  # type: ignore[no-any-return]

    def close(self) -> None:
        try:
            self._call(self._nc.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def naive_facade(
    threads: int,
) -> Callable[[Target, str, list[CloudEventV1], list[CloudEventV1]], Sample]:
    def run(
        target: Target, subject: str, warm: list[CloudEventV1], events: list[CloudEventV1]
    ) -> Sample:
        facade = NaiveFacade(target.url, target.stream)
        try:

            def call(event: CloudEventV1) -> object:
                return facade.publish(subject, event)

            drive_threads(threads, warm, call)
            gc.collect()
            return drive_threads(threads, events, call)
        finally:
            facade.close()

    return run


# -- the sink -------------------------------------------------------------------------------


def _check_clean(sink: JetStreamEventSink) -> None:
    stats = sink.stats()
    if stats.failed or stats.duplicates:
        raise RuntimeError(f"sink run was not clean: {stats}")


def sink_emit(
    threads: int,
) -> Callable[[Target, str, list[CloudEventV1], list[CloudEventV1]], Sample]:
    def run(
        target: Target, subject: str, warm: list[CloudEventV1], events: list[CloudEventV1]
    ) -> Sample:
        with JetStreamEventSink.connect(target.url, subject, stream=target.stream) as sink:
            drive_threads(threads, warm, sink.emit)
            gc.collect()
            sample = drive_threads(threads, events, sink.emit)
            _check_clean(sink)
            return sample

    return run


def sink_emit_nowait(
    target: Target, subject: str, warm: list[CloudEventV1], events: list[CloudEventV1]
) -> Sample:
    """``emit_nowait`` every event, then one ``flush``; latency is the ``emit_nowait`` call."""

    def burst(batch: list[CloudEventV1], sink: JetStreamEventSink) -> Sample:
        latencies: list[int] = []
        perf = time.perf_counter_ns
        submit = sink.emit_nowait
        started = time.perf_counter()
        for event in batch:
            t0 = perf()
            submit(event)
            latencies.append(perf() - t0)
        if not sink.flush(FLUSH_TIMEOUT):
            raise RuntimeError("flush timed out")
        return Sample(len(batch), time.perf_counter() - started, latencies)

    with JetStreamEventSink.connect(target.url, subject, stream=target.stream) as sink:
        burst(warm, sink)
        gc.collect()
        sample = burst(events, sink)
        _check_clean(sink)
        return sample


# -- the ways -------------------------------------------------------------------------------

Runner = Callable[[Target, str, list[CloudEventV1], list[CloudEventV1]], Sample]


@dataclass(frozen=True)
class Way:
    key: str
    label: str
    size: str  # which Plan count: "serial", "concurrent" or "bulk"
    run: Runner
    baseline: Optional[str] = None  # key of the raw way it is compared with
    latency_is: str = "per publish, until its ack"


WAYS: tuple[Way, ...] = (
    Way("raw_serial", "raw js.publish, serial", "serial", raw_js_publish(1)),
    Way("naive_1t", "naive facade, 1 thread", "serial", naive_facade(1), "raw_serial"),
    Way("emit_1t", "sink emit(), 1 thread", "serial", sink_emit(1), "raw_serial"),
    Way("raw_8", "raw js.publish, 8 in flight", "concurrent", raw_js_publish(8)),
    Way("naive_8t", "naive facade, 8 threads", "concurrent", naive_facade(8), "raw_8"),
    Way("emit_8t", "sink emit(), 8 threads", "concurrent", sink_emit(8), "raw_8"),
    Way("raw_256", "raw js.publish, 256 in flight", "bulk", raw_js_publish(256)),
    Way(
        "nowait_1t",
        "sink emit_nowait()+flush()",
        "bulk",
        sink_emit_nowait,
        "raw_256",
        latency_is="the emit_nowait() call only",
    ),
)
WAY_BY_KEY = {way.key: way for way in WAYS}


def run_throughput(
    target: Target, plan: Plan, log: Callable[[str], None]
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {way.key: [] for way in WAYS}
    serial = 0
    for repeat in range(plan.repeats):
        for way in WAYS:
            count = getattr(plan, way.size)
            warm = make_events(plan.warmup, serial)
            events = make_events(count, serial + plan.warmup)
            serial += plan.warmup + count
            purge(target)
            subject = target.subject(f"{way.key}.r{repeat}")
            sample = way.run(target, subject, warm, events)
            samples[way.key].append(sample)
            log(
                f"  [{target.storage} {repeat + 1}/{plan.repeats}] {way.label:<32} "
                f"{sample.events_per_s:>9,.0f} ev/s"
            )
            del warm, events
    purge(target)
    return samples


def aggregate(way: Way, samples: list[Sample]) -> dict[str, Any]:
    summaries = [s.summary() for s in samples]
    return {
        "label": way.label,
        "baseline": way.baseline,
        "events_per_s": round(statistics.median(s["events_per_s"] for s in summaries), 1),
        "p50_us": round(statistics.median(s["p50_us"] for s in summaries), 2),
        "p99_us": round(statistics.median(s["p99_us"] for s in summaries), 2),
        "latency_is": way.latency_is,
        "runs": summaries,
    }


# -- fast-fail ------------------------------------------------------------------------------


class DownPublisher:
    """A publisher whose NATS is down: every publish fails."""

    max_payload = 1024 * 1024

    async def publish(self, subject: str, payload: bytes, headers: Any) -> PubAck:
        raise PublishError("bench: NATS is down")


class BareError(Exception):
    pass


def measure_fast_fail(plan: Plan) -> dict[str, Any]:
    """Median ns per refused ``emit()`` vs a bare ``with lock: raise`` caught the same way."""
    event = make_event(0)
    # A clock that never advances: the circuit opens and stays open.
    with JetStreamEventSink.from_publisher(
        DownPublisher(), "bench.fastfail", clock=lambda: 0.0, retry_attempts=1
    ) as sink:
        with contextlib.suppress(PublishError):
            sink.emit(event)  # opens the circuit
        if not isinstance(sink.debug_state(), Reconnecting):
            raise RuntimeError(f"the circuit did not open: {sink.debug_state()}")
        emit = sink.emit
        perf = time.perf_counter_ns
        batch = plan.fast_fail_batch

        def emit_loop() -> float:
            t0 = perf()
            for _ in range(batch):
                # try/except, not contextlib.suppress: the same catch as the bare loop.
                try:  # noqa: SIM105
                    emit(event)
                except CircuitOpenError:
                    pass
            return (perf() - t0) / batch

        lock = threading.Lock()

        def bare_loop() -> float:
            t0 = perf()
            for _ in range(batch):
                try:
                    with lock:
                        raise BareError()
                except BareError:
                    pass
            return (perf() - t0) / batch

        for _ in range(20):  # warm-up
            emit_loop()
            bare_loop()
        emit_ns: list[float] = []
        bare_ns: list[float] = []
        for _ in range(plan.fast_fail_batches):  # interleaved, so drift hits both alike
            emit_ns.append(emit_loop())
            bare_ns.append(bare_loop())
        rejections = sink.stats().fast_failed
    fast = statistics.median(emit_ns)
    bare = statistics.median(bare_ns)
    return {
        "emit_median_ns": round(fast, 1),
        "bare_lock_raise_median_ns": round(bare, 1),
        "ratio": round(fast / bare, 3),
        "calls_each": plan.fast_fail_batches * batch,
        "batch": batch,
        "rejections_counted_by_sink": rejections,
    }


def measure_handoff(plan: Plan) -> dict[str, Any]:
    """p50 of an empty caller -> loop thread -> caller round trip, as ``emit()`` makes one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-handoff", daemon=True)
    thread.start()
    perf = time.perf_counter_ns
    rounds: list[int] = []
    try:
        for _ in range(plan.handoff_rounds):
            done = threading.Lock()
            done.acquire()
            t0 = perf()
            loop.call_soon_threadsafe(done.release)
            done.acquire()
            rounds.append(perf() - t0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    rounds = rounds[len(rounds) // 10 :]  # the first rounds warm the loop up
    rounds.sort()
    return {"p50_us": round(percentile(rounds, 0.5) / 1000, 1), "rounds": len(rounds)}


# -- memory ---------------------------------------------------------------------------------


def measure_memory(target: Target, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """RSS after ``memory_small`` and ``memory_large`` events through one sink."""
    purge(target)
    subject = target.subject("memory")

    def pump(sink: JetStreamEventSink, start: int, stop: int) -> None:
        for i in range(start, stop):
            sink.emit_nowait(make_event(i))
            if (i + 1) % plan.memory_flush_every == 0 and not sink.flush(FLUSH_TIMEOUT):
                raise RuntimeError("flush timed out")
        if not sink.flush(FLUSH_TIMEOUT):
            raise RuntimeError("flush timed out")

    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    with JetStreamEventSink.connect(target.url, subject, stream=target.stream) as sink:
        pump(sink, 0, plan.memory_small)
        gc.collect()
        small = rss_bytes()
        log(f"  RSS after {plan.memory_small:,} events: {small / 2**20:.1f} MB")
        pump(sink, plan.memory_small, plan.memory_large)
        gc.collect()
        large = rss_bytes()
        log(f"  RSS after {plan.memory_large:,} events: {large / 2**20:.1f} MB")
        _check_clean(sink)
        published = sink.stats().published
    seconds = time.perf_counter() - started
    purge(target)
    return {
        "storage": target.storage,
        "rss_before_mb": round(before / 2**20, 2),
        "rss_small_mb": round(small / 2**20, 2),
        "rss_large_mb": round(large / 2**20, 2),
        "small_events": plan.memory_small,
        "large_events": plan.memory_large,
        "delta_mb": round((large - small) / 2**20, 2),
        "published": published,
        "seconds": round(seconds, 2),
    }


# -- report ---------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def build_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = (
        f"{'storage':<7} {'way':<32} {'events/s':>10} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'vs':<11} {'ev/s ratio':>10} {'p50 ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    for storage, ways in results.items():
        for way in WAYS:
            row = ways[way.key]
            p50 = f"{row['p50_us']:.1f}" + ("*" if way.key == "nowait_1t" else "")
            base = ways[way.baseline] if way.baseline else None
            tput_ratio = f"{ratio(row['events_per_s'], base['events_per_s']):.2f}" if base else ""
            p50_ratio = (
                f"{ratio(row['p50_us'], base['p50_us']):.2f}"
                if base and way.key != "nowait_1t"
                else ""
            )
            lines.append(
                f"{storage:<7} {way.label:<32} {row['events_per_s']:>10,.0f} {p50:>9} "
                f"{row['p99_us']:>9.1f} {way.baseline or '':<11} {tput_ratio:>10} {p50_ratio:>9}"
            )
        lines.append("")
    lines.append("* emit_nowait(): p50/p99 of the emit_nowait() call itself, not to the ack.")
    return "\n".join(lines)


def check_targets(
    results: dict[str, dict[str, dict[str, Any]]],
    fast_fail: dict[str, Any],
    memory: dict[str, Any],
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, storage: Optional[str], value: float, op: str, target: float) -> None:
        ok = {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
        checks.append(
            {"name": name, "storage": storage, "value": value, "target": f"{op} {target}", "ok": ok}
        )

    for storage, ways in results.items():
        add(
            "emit_1t_p50 / raw_serial_p50",
            storage,
            ratio(ways["emit_1t"]["p50_us"], ways["raw_serial"]["p50_us"]),
            "<=",
            TARGET_EMIT_LATENCY,
        )
        add(
            "emit_8t_events_per_s / raw_8_events_per_s",
            storage,
            ratio(ways["emit_8t"]["events_per_s"], ways["raw_8"]["events_per_s"]),
            ">=",
            TARGET_EMIT_8T,
        )
        add(
            "nowait_1t_events_per_s / raw_256_events_per_s",
            storage,
            ratio(ways["nowait_1t"]["events_per_s"], ways["raw_256"]["events_per_s"]),
            ">=",
            TARGET_NOWAIT,
        )
    add(
        "fast_fail_median / bare_lock_raise_median", None, fast_fail["ratio"], "<", TARGET_FAST_FAIL
    )
    add("rss_200k - rss_20k (MB)", memory["storage"], memory["delta_mb"], "<", TARGET_RSS_MB)
    return checks


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = []
    for check in checks:
        where = f"[{check['storage']}]" if check["storage"] else ""
        verdict = "ok  " if check["ok"] else "MISS"
        lines.append(
            f"{verdict} {check['name']:<46} {where:<9} {check['value']:>8.3f}  "
            f"target {check['target']}"
        )
    return "\n".join(lines)


def server_version() -> str:
    try:
        out = subprocess.run(
            [find_nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def git_revision() -> str:
    """The checkout's commit, with "+dirty" when the library has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "cellos_sink_jetstream"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


# -- main -----------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (~1 minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, help="runs per way (default 3, --quick 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    parser.add_argument(
        "--storage",
        default="file,memory",
        help="comma-separated stream storages to run the throughput ways on",
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.repeats, args.scale)
    storages = [s.strip() for s in args.storage.split(",") if s.strip()]
    # Keep the breaker's "circuit opened" warning of the fast-fail run off the table.
    logging.getLogger("cellos_sink_jetstream").setLevel(logging.ERROR)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sample_event = make_event(0).to_json()
    revision = git_revision()  # before the run: the library is imported as of now
    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        log(f"nats-server at {server.client_url}; plan: {plan}")
        targets = {s: stage_stream(server.url, f"BENCH_{s.upper()}", s) for s in storages}
        # Memory first, while the heap is fresh: free arenas left by the throughput runs
        # could otherwise absorb (and hide) growth.
        log("memory:")
        memory = measure_memory(targets[storages[0]], plan, log)
        for storage, target in targets.items():
            log(f"throughput, {storage} storage:")
            samples = run_throughput(target, plan, log)
            results[storage] = {
                key: aggregate(WAY_BY_KEY[key], runs) for key, runs in samples.items()
            }
        log("hand-off floor:")
        handoff = measure_handoff(plan)
        log(f"  empty caller -> loop -> caller round trip: p50 {handoff['p50_us']:.1f} us")
        log("fast-fail:")
        fast_fail = measure_fast_fail(plan)
        log(f"  emit() with the circuit open: {fast_fail['emit_median_ns']:.0f} ns")

    checks = check_targets(results, fast_fail, memory)
    wall_seconds = round(time.perf_counter() - started, 1)
    document: dict[str, Any] = {
        "meta": {
            "git": revision,
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "nats_py": package_version("nats-py"),
            "janus": package_version("janus"),
            "nats_server": server_version(),
            "event_bytes": len(sample_event),
            "plan": plan.__dict__,
            "quick": args.quick,
            "wall_seconds": wall_seconds,
        },
        "throughput": results,
        "fast_fail": fast_fail,
        "handoff": handoff,
        "memory": memory,
        "targets": checks,
    }

    print()
    print(
        f"library {revision}; CloudEvent payload {len(sample_event)} bytes; "
        f"medians over {plan.repeats} run(s)"
    )
    print(build_table(results))
    print()
    print(
        f"fast-fail: emit() with the circuit open {fast_fail['emit_median_ns']:.0f} ns, "
        f"bare lock+raise {fast_fail['bare_lock_raise_median_ns']:.0f} ns "
        f"(ratio {fast_fail['ratio']:.2f})"
    )
    print(
        f"memory: RSS {memory['rss_small_mb']:.1f} MB after {memory['small_events']:,} events, "
        f"{memory['rss_large_mb']:.1f} MB after {memory['large_events']:,} "
        f"(+{memory['delta_mb']:.2f} MB)"
    )
    for storage, ways in results.items():
        extra = ways["emit_1t"]["p50_us"] - ways["raw_serial"]["p50_us"]
        print(
            f"emit() 1 thread p50 over raw serial p50 [{storage}]: +{extra:.0f} us; "
            f"floor for any thread hand-off: +{handoff['p50_us']:.0f} us "
            f"(an empty caller -> loop -> caller round trip)"
        )
    print()
    print("targets:")
    print(format_checks(checks))
    print()
    print(json.dumps(document, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json}")
    log(f"done in {wall_seconds:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
