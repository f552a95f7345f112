"""Benchmark the sink against raw nats-py, on one real nats-server this script starts.

Run from the repository root::

    python benchmarks/bench.py            # full run, 2.5-4 minutes on 2 busy cores
    python benchmarks/bench.py --quick    # under a minute
    python benchmarks/bench.py --json out.json

What is measured, with ~400-byte CloudEvents of a supervisor lifecycle event (every event
has a fresh UUID as its id, so JetStream's duplicate detection never answers for free):

* raw nats-py in its own asyncio loop: ``await js.publish()`` serially, with 8 in flight
  (8 worker coroutines), and the pipelined ways: 256 in flight as a semaphore plus one task
  per event, 256 long-lived worker coroutines sharing one iterator, and nats-py's own
  ``js.publish_async()`` (when the installed nats-py has it) followed by a wait for every
  ack;
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
  blocking ``emit()``;
* where the time goes per event (``breakdown``): CPU of the caller threads, of the sink's
  loop thread and of nats-server, time in the garbage collector, and the rest (waiting:
  wake-ups, the thread hand-off, the network), from per-thread CPU clocks and
  ``gc.callbacks``.

Every way runs with two feeds of events, labelled in the output:

* ``built`` (what the targets are checked on): each event is built inside the timed loop,
  as a supervisor does when it emits. A dict per event (fresh UUID, the current time);
  raw ways send ``json.dumps(d).encode()`` with the headers the sink sends
  (``Nats-Msg-Id``, ``Content-Type``; ``Nats-Expected-Stream`` through
  ``js.publish(stream=...)``); sink ways call ``CloudEventV1.from_dict(d)`` and emit it.
* ``prebuilt``: every ``CloudEventV1`` is built before the timed loop; raw ways still
  serialise it (``to_json()``) inside the loop, as the sink does.

The latency of a blocking way is from the start of building (or serialising) the event to
its ack. Noise: the ways are interleaved inside each repeat (their order rotates from one
repeat to the next) and repeated (``--repeats``, default 5); each way reports the median
over the repeats and its spread (min-max), and the target checks use the medians.
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
from collections.abc import Iterator, Sequence
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

# The project's targets, checked at the end on the medians of the "built" feed.
TARGET_EMIT_LATENCY = 1.2  # emit() 1 thread p50 / raw serial p50                  <=
TARGET_EMIT_8T = 0.8  # emit() 8 threads events/s / raw 8 in flight             >=
TARGET_NOWAIT = 1.0  # emit_nowait+flush events/s / best raw pipelined way       >=
TARGET_FAST_FAIL = 3.0  # fast-fail median / bare lock-and-raise median            <
TARGET_RSS_MB = 10.0  # RSS(200k) - RSS(20k), MB                                  <

HAS_PUBLISH_ASYNC = hasattr(JetStreamContext, "publish_async")


# -- plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many events each measurement uses."""

    warmup: int
    serial: int  # ways with one publish in flight per thread and one thread
    concurrent: int  # 8 threads / 8 in flight
    bulk: int  # the pipelined ways
    repeats: int
    fast_fail_batches: int
    fast_fail_batch: int
    memory_small: int
    memory_large: int
    memory_flush_every: int
    handoff_rounds: int
    breakdown_events: int

    @classmethod
    def make(cls, quick: bool, repeats: Optional[int], scale: float) -> Plan:
        def n(count: int) -> int:
            return max(100, int(count * scale))

        if quick:
            return cls(
                warmup=n(200),
                serial=n(600),
                concurrent=n(2_000),
                bulk=n(4_000),
                repeats=repeats or 3,
                fast_fail_batches=200,
                fast_fail_batch=200,
                memory_small=20_000,
                memory_large=200_000,
                memory_flush_every=1_000,
                handoff_rounds=2_000,
                breakdown_events=n(1_000),
            )
        return cls(
            warmup=n(500),
            serial=n(3_000),
            concurrent=n(8_000),
            bulk=n(20_000),
            repeats=repeats or 5,
            fast_fail_batches=1_000,
            fast_fail_batch=500,
            memory_small=20_000,
            memory_large=200_000,
            memory_flush_every=1_000,
            handoff_rounds=10_000,
            breakdown_events=n(3_000),
        )


# -- events -------------------------------------------------------------------------------

_PHASES = ("created", "starting", "started", "healthy", "stopping", "stopped")


def _cell_and_phase(i: int) -> tuple[str, str]:
    return f"cell-{i % 97:04d}", _PHASES[i % len(_PHASES)]


def _event_data(i: int) -> dict[str, Any]:
    cell, phase = _cell_and_phase(i)
    return {
        "cellId": cell,
        "tenantId": "acme-prod",
        "phase": phase,
        "generation": i,
        "image": "acme/worker:1.42.3",
        "pid": 40_000 + i % 20_000,
    }


def event_dict(i: int) -> dict[str, Any]:
    """What a supervisor builds when it emits: a CloudEvents JSON object (~400 bytes)."""
    cell, phase = _cell_and_phase(i)
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/cellos/supervisor/node-07",
        "type": f"dev.cellos.cell.lifecycle.{phase}",
        "subject": f"cells/{cell}",
        "time": datetime.now(timezone.utc).isoformat(),
        "datacontenttype": "application/json",
        "tenantid": "acme-prod",
        "data": _event_data(i),
    }


def create_event(i: int) -> CloudEventV1:
    """The event of ``event_dict(i)``, made by ``CloudEventV1.create`` (its own id and time)."""
    cell, phase = _cell_and_phase(i)
    return CloudEventV1.create(
        f"dev.cellos.cell.lifecycle.{phase}",
        "/cellos/supervisor/node-07",
        _event_data(i),
        subject=f"cells/{cell}",
        datacontenttype="application/json",
        extensions={"tenantid": "acme-prod"},
    )


def make_event(i: int) -> CloudEventV1:
    """The same event as a validated ``CloudEventV1``."""
    return CloudEventV1.from_dict(event_dict(i))


def headers_for(event_id: str) -> dict[str, str]:
    # The sink sends these plus Nats-Expected-Stream, which js.publish(stream=...) adds.
    return {"Content-Type": CONTENT_TYPE, "Nats-Msg-Id": event_id}


RawMessage = tuple[bytes, dict[str, str]]


@dataclass(frozen=True)
class Feed:
    """Where a way's events come from: built in the timed loop, or built beforehand."""

    key: str
    label: str
    items: Callable[[int, int], list[Any]]  # (start, count) -> what the timed loop gets
    raw: Callable[[Any], RawMessage]  # item -> payload and headers, for raw ways
    sink: Callable[[Any], CloudEventV1]  # item -> event, for sink ways


def _built_raw(i: int) -> RawMessage:
    d = event_dict(i)
    return json.dumps(d).encode(), headers_for(d["id"])


def _built_sink(i: int) -> CloudEventV1:
    return CloudEventV1.from_dict(event_dict(i))


def _prebuilt_raw(event: CloudEventV1) -> RawMessage:
    return event.to_json(), headers_for(event.id)


def _prebuilt_sink(event: CloudEventV1) -> CloudEventV1:
    return event


FEEDS: tuple[Feed, ...] = (
    Feed(
        "built",
        "built in the loop",
        lambda start, count: list(range(start, start + count)),
        _built_raw,
        _built_sink,
    ),
    Feed(
        "created",
        "created in the loop",
        lambda start, count: list(range(start, start + count)),
        _built_raw,
        create_event,
    ),
    Feed(
        "prebuilt",
        "prebuilt",
        lambda start, count: [make_event(i) for i in range(start, start + count)],
        _prebuilt_raw,
        _prebuilt_sink,
    ),
)
FEED_BY_KEY = {feed.key: feed for feed in FEEDS}
PRIMARY_FEED = "built"


# -- meters -------------------------------------------------------------------------------


class GcMeter:
    """Time spent in the garbage collector (any thread), through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.ns = 0
        self.collections = 0
        self.by_thread: dict[int, int] = {}
        self._started: dict[int, int] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        now = time.perf_counter_ns()
        if phase == "start":
            self._started[ident] = now
            return
        began = self._started.pop(ident, None)
        if began is not None:
            spent = now - began
            self.ns += spent
            self.collections += 1
            self.by_thread[ident] = self.by_thread.get(ident, 0) + spent

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


_GC = GcMeter()


def thread_cpu_ns(ident: Optional[int]) -> int:
    """CPU time of one thread of this process (by ``threading`` ident), in ns."""
    if ident is None:
        return 0
    try:
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError):  # not Linux/POSIX: unknown
        return 0


class ServerCpu:
    """CPU time of the nats-server process, from /proc (Linux; 0 elsewhere)."""

    pid: Optional[int] = None

    @classmethod
    def ns(cls) -> int:
        if cls.pid is None:
            return 0
        try:
            with open(f"/proc/{cls.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@dataclass
class Meter:
    """CPU of the process, of the callers, of the sink's loop thread and of the server, and
    time in the garbage collector, over one timed run."""

    cpu_ns: int = 0
    caller_ns: int = 0  # CPU of the threads that call the way (set by the driver)
    loop_ns: int = 0  # CPU of the sink's (or the naive facade's) loop thread
    server_ns: int = 0
    gc_ns: int = 0
    gc_loop_ns: int = 0  # of gc_ns, what ran in the loop thread
    gc_count: int = 0
    loop_ident: Optional[int] = None
    _marks: tuple[int, ...] = ()

    def start(self, loop_ident: Optional[int] = None) -> None:
        self.loop_ident = loop_ident
        self._marks = (
            time.process_time_ns(),
            ServerCpu.ns(),
            _GC.ns,
            _GC.collections,
            thread_cpu_ns(loop_ident),
            _GC.by_thread.get(loop_ident or -1, 0),
        )

    def stop(self) -> None:
        cpu, server, gc_ns, gc_count, loop, gc_loop = self._marks
        self.cpu_ns = time.process_time_ns() - cpu
        self.server_ns = ServerCpu.ns() - server
        self.gc_ns = _GC.ns - gc_ns
        self.gc_count = _GC.collections - gc_count
        self.loop_ns = thread_cpu_ns(self.loop_ident) - loop
        self.gc_loop_ns = _GC.by_thread.get(self.loop_ident or -1, 0) - gc_loop


# -- samples ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[round(q * (len(sorted_values) - 1))])


@dataclass
class Sample:
    """One timed run of one way."""

    events: int
    seconds: float
    latencies_ns: list[int] = field(repr=False)
    meter: Meter = field(default_factory=Meter)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ns)
        per_event = 1e3 * self.events
        return {
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.events_per_s, 1),
            "p50_us": round(percentile(ordered, 0.50) / 1e3, 2),
            "p99_us": round(percentile(ordered, 0.99) / 1e3, 2),
            "client_cpu_us_per_event": round(self.meter.cpu_ns / per_event, 2),
            "server_cpu_us_per_event": round(self.meter.server_ns / per_event, 2),
            "caller_cpu_us_per_event": round(self.meter.caller_ns / per_event, 2),
            "loop_cpu_us_per_event": round(self.meter.loop_ns / per_event, 2),
            "gc_us_per_event": round(self.meter.gc_ns / per_event, 2),
            "gc_loop_us_per_event": round(self.meter.gc_loop_ns / per_event, 2),
            "gc_collections": self.meter.gc_count,
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


def _check_ack(ack: api.PubAck) -> None:
    if ack.duplicate:
        raise RuntimeError("JetStream reported a duplicate: event ids are not unique")


RawRun = Callable[[JetStreamContext, str, str, Feed, list[Any]], Any]


async def _raw_workers(
    js: JetStreamContext, subject: str, stream: str, feed: Feed, items: list[Any], workers: int
) -> list[int]:
    """``workers`` coroutines sharing one iterator, each awaiting ``js.publish`` in turn."""
    latencies: list[int] = []
    perf = time.perf_counter_ns
    prepare = feed.raw
    shared: Iterator[Any] = iter(items)

    async def worker() -> None:
        for item in shared:
            t0 = perf()
            payload, headers = prepare(item)
            _check_ack(await js.publish(subject, payload, stream=stream, headers=headers))
            latencies.append(perf() - t0)

    if workers == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies


async def _raw_tasks(
    js: JetStreamContext, subject: str, stream: str, feed: Feed, items: list[Any], window: int
) -> list[int]:
    """A semaphore of ``window`` and one task per event."""
    latencies: list[int] = []
    perf = time.perf_counter_ns
    prepare = feed.raw
    slots = asyncio.Semaphore(window)

    async def one(item: Any) -> None:
        t0 = perf()
        try:
            payload, headers = prepare(item)
            _check_ack(await js.publish(subject, payload, stream=stream, headers=headers))
        finally:
            slots.release()
        latencies.append(perf() - t0)

    tasks = []
    for item in items:
        await slots.acquire()
        tasks.append(asyncio.ensure_future(one(item)))
    await asyncio.gather(*tasks)
    return latencies


async def _raw_publish_async(
    js: JetStreamContext, subject: str, stream: str, feed: Feed, items: list[Any]
) -> list[int]:
    """nats-py's own ``js.publish_async()`` for every event, then every ack awaited."""
    latencies: list[int] = []
    perf = time.perf_counter_ns
    prepare = feed.raw
    publish_async = js.publish_async  # type: ignore[attr-defined,unused-ignore]
    futures = []
    for item in items:
        t0 = perf()
        payload, headers = prepare(item)
        futures.append(await publish_async(subject, payload, stream=stream, headers=headers))
        latencies.append(perf() - t0)
    for ack in await asyncio.gather(*futures):
        _check_ack(ack)
    return latencies


def raw_way(
    kind: str, width: int = 1
) -> Callable[[Target, str, Feed, list[Any], list[Any]], Sample]:
    """A raw nats-py way in its own asyncio loop: ``workers``, ``tasks`` or ``async``."""

    async def once(
        js: JetStreamContext, subject: str, stream: str, feed: Feed, items: list[Any]
    ) -> list[int]:
        if kind == "workers":
            return await _raw_workers(js, subject, stream, feed, items, width)
        if kind == "tasks":
            return await _raw_tasks(js, subject, stream, feed, items, width)
        return await _raw_publish_async(js, subject, stream, feed, items)

    def run(target: Target, subject: str, feed: Feed, warm: list[Any], items: list[Any]) -> Sample:
        async def main() -> Sample:
            nc: Client = await nats.connect(target.url, name="bench-raw", allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=10.0)
                await once(js, subject, target.stream, feed, warm)
                gc.collect()
                meter = Meter()
                meter.start()
                cpu0 = time.thread_time_ns()
                started = time.perf_counter()
                latencies = await once(js, subject, target.stream, feed, items)
                seconds = time.perf_counter() - started
                meter.caller_ns = time.thread_time_ns() - cpu0  # caller and loop: one thread
                meter.stop()
                return Sample(len(items), seconds, latencies, meter)
            finally:
                await nc.close()

        return asyncio.run(main())

    return run


# -- threads driving a blocking call --------------------------------------------------------


def drive_threads(
    threads: int,
    items: list[Any],
    call: Callable[[Any], object],
    loop_ident: Optional[int] = None,
) -> Sample:
    """Call ``call(item)`` for every item from ``threads`` threads (the caller if 1)."""
    chunks = [items[i::threads] for i in range(threads)]
    latencies: list[list[int]] = [[] for _ in range(threads)]
    cpu_ns = [0] * threads
    errors: list[BaseException] = []
    perf = time.perf_counter_ns

    def work(index: int) -> None:
        out = latencies[index]
        cpu0 = time.thread_time_ns()
        try:
            for item in chunks[index]:
                t0 = perf()
                call(item)
                out.append(perf() - t0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            cpu_ns[index] = time.thread_time_ns() - cpu0

    meter = Meter()
    if threads == 1:
        meter.start(loop_ident)
        started = time.perf_counter()
        work(0)
        seconds = time.perf_counter() - started
        meter.stop()
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
        meter.start(loop_ident)
        gate.wait()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
        meter.stop()
    meter.caller_ns = sum(cpu_ns)
    if errors:
        raise errors[0]
    return Sample(len(items), seconds, [x for chunk in latencies for x in chunk], meter)


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

    @property
    def loop_ident(self) -> Optional[int]:
        return self._thread.ident

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def publish(self, subject: str, message: RawMessage) -> api.PubAck:
        payload, headers = message
        ack: api.PubAck = self._call(
            self._js.publish(subject, payload, stream=self._stream, headers=headers)
        )
        _check_ack(ack)
        return ack

    def close(self) -> None:
        try:
            self._call(self._nc.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def naive_facade(threads: int) -> Callable[[Target, str, Feed, list[Any], list[Any]], Sample]:
    def run(target: Target, subject: str, feed: Feed, warm: list[Any], items: list[Any]) -> Sample:
        facade = NaiveFacade(target.url, target.stream)
        prepare = feed.raw
        try:

            def call(item: Any) -> object:
                return facade.publish(subject, prepare(item))

            drive_threads(threads, warm, call)
            gc.collect()
            return drive_threads(threads, items, call, facade.loop_ident)
        finally:
            facade.close()

    return run


# -- the sink -------------------------------------------------------------------------------


def _check_clean(sink: JetStreamEventSink) -> None:
    stats = sink.stats()
    if stats.failed or stats.duplicates:
        raise RuntimeError(f"sink run was not clean: {stats}")


def sink_emit(threads: int) -> Callable[[Target, str, Feed, list[Any], list[Any]], Sample]:
    def run(target: Target, subject: str, feed: Feed, warm: list[Any], items: list[Any]) -> Sample:
        prepare = feed.sink
        with JetStreamEventSink.connect(target.url, subject, stream=target.stream) as sink:
            emit = sink.emit

            def call(item: Any) -> None:
                emit(prepare(item))

            drive_threads(threads, warm, call)
            gc.collect()
            sample = drive_threads(threads, items, call, _loop_ident(sink))
            _check_clean(sink)
            return sample

    return run


def _loop_ident(sink: JetStreamEventSink) -> Optional[int]:
    runner = sink._runner  # the benchmark may look inside: which thread is the loop's
    return None if runner is None else runner.thread_ident


def _burst(sink: JetStreamEventSink, feed: Feed, items: list[Any]) -> Sample:
    latencies: list[int] = []
    perf = time.perf_counter_ns
    submit = sink.emit_nowait
    prepare = feed.sink
    meter = Meter()
    meter.start(_loop_ident(sink))
    cpu0 = time.thread_time_ns()
    started = time.perf_counter()
    for item in items:
        t0 = perf()
        submit(prepare(item))
        latencies.append(perf() - t0)
    if not sink.flush(FLUSH_TIMEOUT):
        raise RuntimeError("flush timed out")
    seconds = time.perf_counter() - started
    meter.caller_ns = time.thread_time_ns() - cpu0
    meter.stop()
    return Sample(len(items), seconds, latencies, meter)


def sink_emit_nowait(
    target: Target, subject: str, feed: Feed, warm: list[Any], items: list[Any]
) -> Sample:
    """``emit_nowait`` every event, then one ``flush``; latency is the ``emit_nowait`` call."""
    with JetStreamEventSink.connect(target.url, subject, stream=target.stream) as sink:
        _burst(sink, feed, warm)
        gc.collect()
        sample = _burst(sink, feed, items)
        _check_clean(sink)
        return sample


# -- the ways -------------------------------------------------------------------------------

Runner = Callable[[Target, str, Feed, list[Any], list[Any]], Sample]


@dataclass(frozen=True)
class Way:
    key: str
    label: str
    size: str  # which Plan count: "serial", "concurrent" or "bulk"
    run: Runner
    # Keys of the raw ways it is compared with; with several, the best of them.
    baseline: tuple[str, ...] = ()
    latency_is: str = "per event, from building it to its ack"


PIPELINED_RAW = ("raw_256_tasks", "raw_256_workers") + (
    ("raw_publish_async",) if HAS_PUBLISH_ASYNC else ()
)

WAYS: tuple[Way, ...] = (
    Way("raw_serial", "raw js.publish, serial", "serial", raw_way("workers", 1)),
    Way("naive_1t", "naive facade, 1 thread", "serial", naive_facade(1), ("raw_serial",)),
    Way("emit_1t", "sink emit(), 1 thread", "serial", sink_emit(1), ("raw_serial",)),
    Way("raw_8", "raw js.publish, 8 workers", "concurrent", raw_way("workers", 8)),
    Way("naive_8t", "naive facade, 8 threads", "concurrent", naive_facade(8), ("raw_8",)),
    Way("emit_8t", "sink emit(), 8 threads", "concurrent", sink_emit(8), ("raw_8",)),
    Way("raw_256_tasks", "raw js.publish, 256 tasks+sem", "bulk", raw_way("tasks", 256)),
    Way("raw_256_workers", "raw js.publish, 256 workers", "bulk", raw_way("workers", 256)),
    *(
        (
            Way(
                "raw_publish_async",
                "raw js.publish_async()",
                "bulk",
                raw_way("async"),
                latency_is="the publish_async() call only",
            ),
        )
        if HAS_PUBLISH_ASYNC
        else ()
    ),
    Way(
        "nowait_1t",
        "sink emit_nowait()+flush()",
        "bulk",
        sink_emit_nowait,
        PIPELINED_RAW,
        latency_is="the emit_nowait() call only",
    ),
)
WAY_BY_KEY = {way.key: way for way in WAYS}
SIZES = ("serial", "concurrent", "bulk")


def run_throughput(
    target: Target, plan: Plan, feeds: Sequence[Feed], log: Callable[[str], None]
) -> dict[str, dict[str, list[Sample]]]:
    """Every way with every feed, ``plan.repeats`` times: samples[feed][way]."""
    samples: dict[str, dict[str, list[Sample]]] = {
        feed.key: {way.key: [] for way in WAYS} for feed in feeds
    }
    serial = 0
    for repeat in range(plan.repeats):
        # Interleaved: the ways that are compared run next to each other, and the order
        # rotates from one repeat to the next, so drift and position hit them all alike.
        for size in SIZES:
            group = [(way, feed) for way in WAYS if way.size == size for feed in feeds]
            shift = repeat % len(group)
            for way, feed in group[shift:] + group[:shift]:
                count = getattr(plan, way.size)
                warm = feed.items(serial, plan.warmup)
                items = feed.items(serial + plan.warmup, count)
                serial += plan.warmup + count
                purge(target)
                subject = target.subject(f"{way.key}.{feed.key}.r{repeat}")
                sample = way.run(target, subject, feed, warm, items)
                samples[feed.key][way.key].append(sample)
                summary = sample.summary()
                log(
                    f"  [{target.storage} {repeat + 1}/{plan.repeats}] {feed.key:<8} "
                    f"{way.label:<30} {sample.events_per_s:>9,.0f} ev/s  "
                    f"p50 {summary['p50_us']:>7.1f} us"
                )
                del warm, items
    purge(target)
    return samples


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def aggregate(way: Way, samples: list[Sample]) -> dict[str, Any]:
    summaries = [s.summary() for s in samples]

    def med(key: str) -> float:
        return round(statistics.median(s[key] for s in summaries), 2)

    return {
        "label": way.label,
        "baseline": list(way.baseline),
        "events_per_s": med("events_per_s"),
        "p50_us": med("p50_us"),
        "p99_us": med("p99_us"),
        "events_per_s_spread": _spread([s["events_per_s"] for s in summaries]),
        "p50_us_spread": _spread([s["p50_us"] for s in summaries]),
        "client_cpu_us_per_event": med("client_cpu_us_per_event"),
        "server_cpu_us_per_event": med("server_cpu_us_per_event"),
        "caller_cpu_us_per_event": med("caller_cpu_us_per_event"),
        "loop_cpu_us_per_event": med("loop_cpu_us_per_event"),
        "gc_us_per_event": med("gc_us_per_event"),
        "gc_loop_us_per_event": med("gc_loop_us_per_event"),
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


Results = dict[str, dict[str, dict[str, dict[str, Any]]]]  # storage -> feed -> way -> row
Raw = dict[str, dict[str, dict[str, list[Sample]]]]  # storage -> feed -> way -> samples


def best_of(ways: dict[str, dict[str, Any]], keys: Sequence[str]) -> tuple[str, float]:
    """The baseline with the most events/s (medians), and that rate."""
    key = max(keys, key=lambda k: ways[k]["events_per_s"])
    return key, ways[key]["events_per_s"]


def _range(spread: dict[str, float], digits: int = 0) -> str:
    return f"{spread['min']:,.{digits}f}-{spread['max']:,.{digits}f}"


def build_table(results: Results) -> str:
    header = (
        f"{'way':<31} {'events/s':>9} {'(min-max)':>15} {'p50 µs':>8} {'(min-max)':>13} "
        f"{'p99 µs':>8} {'cpu µs/ev':>9} {'srv µs/ev':>9} {'gc µs/ev':>8}  "
        f"{'vs':<17} {'ev/s x':>6} {'p50 x':>6}"
    )
    lines: list[str] = []
    for storage, feeds in results.items():
        for feed_key, ways in feeds.items():
            lines += ["", f"[{storage} storage, events {FEED_BY_KEY[feed_key].label}]"]
            lines += [header, "-" * len(header)]
            for way in WAYS:
                row = ways[way.key]
                star = "*" if way.latency_is.endswith("call only") else ""
                base_key, base_rate = best_of(ways, way.baseline) if way.baseline else ("", 0.0)
                tput = f"{ratio(row['events_per_s'], base_rate):.2f}" if base_key else ""
                p50 = (
                    f"{ratio(row['p50_us'], ways[base_key]['p50_us']):.2f}"
                    if base_key and not star and len(way.baseline) == 1
                    else ""
                )
                lines.append(
                    f"{way.label:<31} {row['events_per_s']:>9,.0f} "
                    f"{_range(row['events_per_s_spread']):>15} "
                    f"{row['p50_us']:>7.1f}{star or ' '} {_range(row['p50_us_spread'], 1):>13} "
                    f"{row['p99_us']:>8.1f} {row['client_cpu_us_per_event']:>9.1f} "
                    f"{row['server_cpu_us_per_event']:>9.1f} {row['gc_us_per_event']:>8.2f}  "
                    f"{base_key:<17} {tput:>6} {p50:>6}"
                )
    lines += [
        "",
        "medians over the repeats, (min-max) across them; cpu = this process, srv = nats-server;",
        "vs = the raw way compared with (for emit_nowait, the best raw pipelined way by median);",
        "* p50 of the emit_nowait()/publish_async() call itself, not to the ack.",
    ]
    return "\n".join(lines)


def paired_ratios(raw: Raw, storage: str, feed: str) -> dict[str, dict[str, float]]:
    """The target ratios computed within each repeat (ways of one repeat ran side by side)."""
    ways = raw[storage][feed]
    repeats = len(ways["raw_serial"])

    def p50(sample: Sample) -> float:
        return sample.summary()["p50_us"]

    latency, eight, nowait = [], [], []
    for r in range(repeats):
        latency.append(p50(ways["emit_1t"][r]) / p50(ways["raw_serial"][r]))
        eight.append(ways["emit_8t"][r].events_per_s / ways["raw_8"][r].events_per_s)
        best = max(ways[k][r].events_per_s for k in PIPELINED_RAW)
        nowait.append(ways["nowait_1t"][r].events_per_s / best)
    return {
        "emit_1t_p50 / raw_serial_p50": _spread(latency),
        "emit_8t / raw_8": _spread(eight),
        "nowait_1t / best raw pipelined": _spread(nowait),
    }


BREAKDOWN_WAYS = (
    "raw_serial",
    "emit_1t",
    "naive_1t",
    "raw_8",
    "emit_8t",
    *PIPELINED_RAW,
    "nowait_1t",
)


def breakdown(results: Results, storage: str, feed: str, handoff_us: float) -> list[dict[str, Any]]:
    """Per event (medians over the repeats): wall time and where the CPU went."""
    rows = []
    for key in BREAKDOWN_WAYS:
        row = results[storage][feed][key]
        wall = 1e6 / row["events_per_s"]
        caller = row["caller_cpu_us_per_event"]
        loop = row["loop_cpu_us_per_event"]
        server = row["server_cpu_us_per_event"]
        rows.append(
            {
                "way": key,
                "wall_us": round(wall, 1),
                "caller_cpu_us": caller,
                "loop_cpu_us": loop,
                "gc_us": row["gc_us_per_event"],
                "gc_in_loop_us": row["gc_loop_us_per_event"],
                "server_cpu_us": server,
                "handoff_floor_us": handoff_us if key in ("emit_1t", "emit_8t", "naive_1t") else 0,
                "wall_minus_cpu_us": round(wall - caller - loop - server, 1),
            }
        )
    return rows


def format_breakdown(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'way':<18} {'wall':>7} {'caller':>7} {'loop':>7} {'gc':>6} {'(loop)':>6} "
        f"{'server':>7} {'hand-off':>8} {'wall-cpu':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        handoff = f"{r['handoff_floor_us']:.0f}" if r["handoff_floor_us"] else ""
        lines.append(
            f"{r['way']:<18} {r['wall_us']:>7.1f} {r['caller_cpu_us']:>7.1f} "
            f"{r['loop_cpu_us']:>7.1f} {r['gc_us']:>6.2f} {r['gc_in_loop_us']:>6.2f} "
            f"{r['server_cpu_us']:>7.1f} {handoff:>8} {r['wall_minus_cpu_us']:>8.1f}"
        )
    lines.append(
        "µs per event; wall = 1/throughput; caller = CPU of the calling thread(s) (for raw "
        "ways also their loop); loop = the sink's/facade's loop thread; gc = in the collector, "
        "(loop) = of it in the loop thread; server = nats-server CPU; hand-off = the empty "
        "round trip floor (blocking ways); wall-cpu = waiting (negative: the 2 cores overlapped)"
    )
    return "\n".join(lines)


def _verdict(
    name: str, storage: Optional[str], value: float, op: str, target: float
) -> dict[str, Any]:
    ok = {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
    return {"name": name, "storage": storage, "value": value, "target": f"{op} {target}", "ok": ok}


def throughput_checks(results: Results, feed_key: str) -> list[dict[str, Any]]:
    """The three throughput targets on one feed's medians, per storage."""
    checks = []
    for storage, feeds in results.items():
        ways = feeds[feed_key]
        best_key, best_rate = best_of(ways, PIPELINED_RAW)
        checks += [
            _verdict(
                "emit_1t_p50 / raw_serial_p50",
                storage,
                ratio(ways["emit_1t"]["p50_us"], ways["raw_serial"]["p50_us"]),
                "<=",
                TARGET_EMIT_LATENCY,
            ),
            _verdict(
                "emit_8t_events_per_s / raw_8_events_per_s",
                storage,
                ratio(ways["emit_8t"]["events_per_s"], ways["raw_8"]["events_per_s"]),
                ">=",
                TARGET_EMIT_8T,
            ),
            _verdict(
                f"nowait_1t_events_per_s / {best_key}",
                storage,
                ratio(ways["nowait_1t"]["events_per_s"], best_rate),
                ">=",
                TARGET_NOWAIT,
            ),
        ]
    return checks


def check_targets(
    results: Results,
    fast_fail: dict[str, Any],
    memory: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every target: the throughput ones on the primary feed, then fast-fail and memory."""
    return [
        *throughput_checks(results, PRIMARY_FEED),
        _verdict(
            "fast_fail_median / bare_lock_raise_median",
            None,
            fast_fail["ratio"],
            "<",
            TARGET_FAST_FAIL,
        ),
        _verdict(
            "rss_200k - rss_20k (MB)", memory["storage"], memory["delta_mb"], "<", TARGET_RSS_MB
        ),
    ]


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = []
    for check in checks:
        where = f"[{check['storage']}]" if check["storage"] else ""
        verdict = "ok  " if check["ok"] else "MISS"
        lines.append(
            f"{verdict} {check['name']:<50} {where:<9} {check['value']:>8.3f}  "
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
# -- main -----------------------------------------------------------------------------------


def pin_to_one_cpu() -> int:
    """Keep the calling thread, and the threads it starts from now on, on one CPU.

    Called after nats-server started, which keeps every CPU. The sink's calling threads
    and its loop thread take turns at the GIL anyway; on one CPU the wake-ups between
    them need no idle vCPU to wake (see benchmarks/README.md, evening of 2 December).
    """
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def profile_one(spec: str, plan: Plan, server: NatsServer, log: Callable[[str], None]) -> int:
    """``--profile WAY[:FEED]``: run one way once, for a profiler (py-spy) to watch."""
    key, _, feed_key = spec.partition(":")
    way, feed = WAY_BY_KEY[key], FEED_BY_KEY[feed_key or PRIMARY_FEED]
    target = stage_stream(server.url, "BENCH_FILE", "file")
    count = getattr(plan, way.size)
    warm = feed.items(0, plan.warmup)
    items = feed.items(plan.warmup, count)
    log(f"profiling {way.label} ({feed.label}), {count:,} events")
    sample = way.run(target, target.subject(f"{key}.profile"), feed, warm, items)
    print(json.dumps({"way": key, "feed": feed.key, **sample.summary()}, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 3 repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--repeats", type=int, help="runs per way (default 5, --quick 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    parser.add_argument(
        "--storage",
        default="file",
        help="comma-separated stream storages to run the throughput ways on (file,memory)",
    )
    parser.add_argument(
        "--feeds",
        default="built,prebuilt",
        help="comma-separated event feeds: built (from_dict in the timed loop), "
        "created (CloudEventV1.create in the timed loop), prebuilt",
    )
    parser.add_argument(
        "--one-cpu",
        action="store_true",
        help="run this process's threads (not nats-server) on one CPU, as an application "
        "that emits from one thread can (see the README): Linux only",
    )
    parser.add_argument(
        "--profile",
        metavar="WAY[:FEED]",
        help="run only this way once (e.g. emit_1t:built), to watch it with py-spy",
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.repeats, args.scale)
    storages = [s.strip() for s in args.storage.split(",") if s.strip()]
    feeds = [FEED_BY_KEY[f.strip()] for f in args.feeds.split(",") if f.strip()]
    if PRIMARY_FEED not in {feed.key for feed in feeds}:
        parser.error(f"--feeds must include {PRIMARY_FEED!r}: the targets are checked on it")
    # Keep the breaker's "circuit opened" warning of the fast-fail run off the table.
    logging.getLogger("cellos_sink_jetstream").setLevel(logging.ERROR)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sample_event = make_event(0).to_json()
    revision = git_revision()  # before the run: the library is imported as of now
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: Results = {}
    raw: Raw = {}
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server, _GC:
        proc = getattr(server, "_proc", None)
        ServerCpu.pid = None if proc is None else proc.pid
        one_cpu = pin_to_one_cpu() if args.one_cpu else None
        if args.profile:
            return profile_one(args.profile, plan, server, log)
        log(f"nats-server at {server.client_url}; plan: {plan}; feeds: {args.feeds}")
        log(f"load average: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
        targets = {s: stage_stream(server.url, f"BENCH_{s.upper()}", s) for s in storages}
        # Memory first, while the heap is fresh: free arenas left by the throughput runs
        # could otherwise absorb (and hide) growth.
        log("memory:")
        memory = measure_memory(targets[storages[0]], plan, log)
        for storage, target in targets.items():
            log(f"throughput, {storage} storage:")
            raw[storage] = run_throughput(target, plan, feeds, log)
            results[storage] = {
                feed_key: {key: aggregate(WAY_BY_KEY[key], runs) for key, runs in ways.items()}
                for feed_key, ways in raw[storage].items()
            }
        log("hand-off floor:")
        handoff = measure_handoff(plan)
        log(f"  empty caller -> loop -> caller round trip: p50 {handoff['p50_us']:.1f} us")
        log("fast-fail:")
        fast_fail = measure_fast_fail(plan)
        log(f"  emit() with the circuit open: {fast_fail['emit_median_ns']:.0f} ns")

    load_after = os.getloadavg()
    checks = check_targets(results, fast_fail, memory)
    # Issue #13 lets the sink's side make its events with create() as well as from_dict():
    # the same throughput targets on that feed, reported beside the primary check.
    ran_created = "created" in {feed.key for feed in feeds}
    created_checks = throughput_checks(results, "created") if ran_created else []
    paired = {
        storage: {feed.key: paired_ratios(raw, storage, feed.key) for feed in feeds}
        for storage in storages
    }
    breakdowns = {
        storage: {
            feed.key: breakdown(results, storage, feed.key, handoff["p50_us"]) for feed in feeds
        }
        for storage in storages
    }
    wall_seconds = round(time.perf_counter() - started, 1)
    document: dict[str, Any] = {
        "meta": {
            "git": revision,
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "nats_py": package_version("nats-py"),
            "nats_py_has_publish_async": HAS_PUBLISH_ASYNC,
            "janus": package_version("janus"),
            "nats_server": server_version(),
            "event_bytes": len(sample_event),
            "plan": plan.__dict__,
            "feeds": [feed.key for feed in feeds],
            "primary_feed": PRIMARY_FEED,
            "quick": args.quick,
            "one_cpu": one_cpu,
            "wall_seconds": wall_seconds,
            "argv": sys.argv[1:] if argv is None else list(argv),
        },
        "throughput": results,
        "paired_ratios": paired,
        "breakdown": breakdowns,
        "fast_fail": fast_fail,
        "handoff": handoff,
        "memory": memory,
        "targets": checks,
        "targets_created": created_checks,
    }

    print()
    print(
        f"library {revision}; nats-py {package_version('nats-py')}; CloudEvent payload "
        f"{len(sample_event)} bytes; medians over {plan.repeats} interleaved repeat(s); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"on {os.cpu_count()} CPU(s)"
        + ("" if one_cpu is None else f"; this process's threads on CPU {one_cpu} only")
    )
    print(build_table(results))
    print()
    print("target ratios within each repeat (median, min-max over the repeats):")
    for storage, ratios_by_feed in paired.items():
        for feed_key, ratios in ratios_by_feed.items():
            for name, spread in ratios.items():
                print(
                    f"  [{storage}, {feed_key:<8}] {name:<32} {spread['median']:.2f} "
                    f"({spread['min']:.2f}-{spread['max']:.2f})"
                )
    print()
    for storage, rows_by_feed in breakdowns.items():
        for feed_key, rows in rows_by_feed.items():
            print(
                f"where the time goes, per event [{storage}, events {FEED_BY_KEY[feed_key].label}]:"
            )
            print(format_breakdown(rows))
            print()
    if "prebuilt" in {feed.key for feed in feeds}:
        for storage, by_feed in results.items():
            for key in ("raw_serial", "emit_1t", "naive_1t"):
                built, pre = by_feed["built"][key], by_feed["prebuilt"][key]
                print(
                    f"[{storage}] {key}: p50 built in the loop {built['p50_us']:.0f} us, prebuilt "
                    f"{pre['p50_us']:.0f} us ({built['p50_us'] - pre['p50_us']:+.0f} us); "
                    f"GC {built['gc_us_per_event']:.2f} vs {pre['gc_us_per_event']:.2f} us/event"
                )
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
    for storage, by_feed in results.items():
        ways = by_feed[PRIMARY_FEED]
        raw_p50 = ways["raw_serial"]["p50_us"]
        extra = ways["emit_1t"]["p50_us"] - raw_p50
        # Two thread hand-offs are under every blocking emit(). What the sink saves on the
        # ack (it polls for it instead of sleeping, see _busy_poll) can pay for some.
        with_handoff = ratio(raw_p50 + handoff["p50_us"], raw_p50)
        print(
            f"emit() 1 thread p50 over raw serial p50 [{storage}, built]: {extra:+.0f} us; "
            f"the thread hand-off: +{handoff['p50_us']:.0f} us "
            f"(an empty caller -> loop -> caller round trip), raw serial plus it "
            f"= {with_handoff:.2f}x raw in this run"
        )
    print()
    print(f"targets (medians, events {FEED_BY_KEY[PRIMARY_FEED].label}):")
    print(format_checks(checks))
    print()
    if created_checks:
        print(f"the same throughput targets, events {FEED_BY_KEY['created'].label}:")
        print(format_checks(created_checks))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json}")
    else:
        print(json.dumps(document, indent=2))
    log(f"done in {wall_seconds:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
