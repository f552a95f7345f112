"""How much of emit() from 8 threads is the sink's own bookkeeping: a bare hand-off beside it.

``bare_8t`` is the thinnest hand-off the design allows, run inside a connected sink: the
same loop thread, selector, wake-up pipe, connection and ack parser, and events made and
serialised the same way (``from_dict`` or ``create``, ``to_json``, the sink's header
template). What it leaves out is everything else ``emit()`` does: the breaker, the janus
queue, deadlines, the in-flight limit, retries, the outcome hook, the counts. A caller
appends ``(subject, payload, headers, lock)`` to a deque, wakes the loop and waits on the
lock; the loop sends what the deque holds and releases each lock from the ack.

Interleaved with ``emit_8t`` and ``raw_8`` of ``bench.py``, medians of the repeats (spread
in parentheses)::

    .venv/bin/python benchmarks/bare_handoff.py --feed created --repeats 8
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import statistics
import threading
from collections.abc import Iterator
from typing import Any

import bench

from cellos_sink_jetstream import JetStreamEventSink
from cellos_sink_jetstream._server import NatsServer

THREADS = 8
WARM_UP = 1_000


@contextlib.contextmanager
def bare_lane(sink: JetStreamEventSink) -> Iterator[Any]:
    """Swap the runner's drain and ack listener for bare ones; yield the caller's call."""
    runner = sink._runner  # a benchmark may look inside
    assert runner is not None
    assert runner._loop is not None
    publisher, waker, loop = runner._publisher, runner._waker, runner._loop
    assert publisher is not None
    handed: collections.deque[tuple[str, bytes, Any, threading.Lock]] = collections.deque()
    send, flush = publisher.send_now, publisher.flush_writes

    def drain() -> None:
        while handed:
            send(*handed.popleft())
        flush()

    def on_ack(lock: threading.Lock, ack: object, error: object) -> None:
        lock.release()

    def swap(listener: Any, on_wake: Any) -> None:
        swapped = threading.Event()

        def on_loop() -> None:
            publisher.listen(listener)
            waker._on_wake = on_wake
            swapped.set()

        loop.call_soon_threadsafe(on_loop)
        swapped.wait()

    subject, template, wake = sink.subject, sink._headers, waker.wake

    def emit(event: Any) -> None:
        lock = threading.Lock()
        lock.acquire()
        handed.append((subject, event.to_json(), template.fill(event.id), lock))
        wake()
        lock.acquire()

    swap(on_ack, drain)
    try:
        yield emit
    finally:
        swap(runner._on_ack, runner._drain)


def run_bare(target: bench.Target, feed: bench.Feed, warm: list[Any], items: list[Any]) -> float:
    with (
        JetStreamEventSink.connect(
            target.url, target.subject("bare_8t"), stream=target.stream
        ) as sink,
        bare_lane(sink) as emit,
    ):
        prepare = feed.sink

        def call(item: Any) -> None:
            emit(prepare(item))

        bench.drive_threads(THREADS, warm, call)
        gc.collect()
        return bench.drive_threads(THREADS, items, call).events_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feed", default="built", choices=sorted(bench.FEED_BY_KEY))
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--events", type=int, default=12_000)
    args = parser.parse_args()
    feed = bench.FEED_BY_KEY[args.feed]
    warm, items = feed.items(10**7, WARM_UP), feed.items(0, args.events)
    results: dict[str, list[float]] = collections.defaultdict(list)
    ways = ["bare_8t", "emit_8t", "raw_8"]
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        target = bench.stage_stream(server.url, "BENCH_FILE", "file")
        for repeat in range(args.repeats):
            turn = repeat % len(ways)
            for way in ways[turn:] + ways[:turn]:
                bench.purge(target)
                gc.collect()
                if way == "bare_8t":
                    rate = run_bare(target, feed, warm, items)
                else:
                    way_ = bench.WAY_BY_KEY[way]
                    rate = way_.run(target, target.subject(way), feed, warm, items).events_per_s
                results[way].append(rate)
    raw = statistics.median(results["raw_8"])
    print(f"{args.feed} events, {args.repeats} interleaved repeats of {args.events:,}:")
    for way in ways:
        rates = results[way]
        median = statistics.median(rates)
        print(
            f"  {way:8s} {median:8,.0f} events/s ({min(rates):,.0f}-{max(rates):,.0f})"
            f"  / raw_8 {median / raw:.3f}"
        )


if __name__ == "__main__":
    main()
