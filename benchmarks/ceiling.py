"""What the sink reaches with NATS taken out, beside raw nats-py against a real server.

Run from the repository root (starts its own ``nats-server``; about a minute)::

    python benchmarks/ceiling.py            # --repeats N (default 5), --scale X

``bench.py`` compares the sink with raw nats-py. When a target is missed, this tells
where the gap is: in the sink's NATS side, or in what is left when NATS costs nothing.
The ``free`` ways drive the same sink (``JetStreamEventSink.from_publisher``) over
:class:`FreePublisher`, which stores nothing and acks every batch of sends on the next
loop turn, as one read of acks would; everything else (the caller's event building and
validation, the queue, the loop thread, the futures or the caller's wake-up) is the
sink's own. ``bare_8t`` is no library at all: 8 threads each build the event, hand it to
an asyncio loop thread and wait for the loop to let them go (``call_soon_threadsafe``
of a lock release), the least any thread-backed facade does.

All ways get ``bench.py``'s events built in the timed loop, run interleaved (the order
rotates each repeat) and report the median and spread of their repeats. A ``free`` way
at or below the target ratio against the raw way of the same run means that no change
to the NATS side can reach the target on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the same feed, ways, thread driver and server set-up

from cellos_sink_jetstream import JetStreamEventSink
from cellos_sink_jetstream._seam import AckListener, PubAck
from cellos_sink_jetstream._server import NatsServer

EIGHT = 8


class FreePublisher:
    """A pipelined publisher for which NATS costs nothing: every send is acked.

    The sends of one batch are acked together on the next loop turn, from one callback,
    as the acks of one socket read are.
    """

    def __init__(self) -> None:
        self._listener: Optional[AckListener] = None
        self._batch: list[tuple[Any, PubAck]] = []
        self._seq = 0
        self.max_payload = 1024 * 1024

    def listen(self, listener: AckListener) -> None:
        self._listener = listener

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        self._seq += 1
        self._batch.append((receiver, PubAck("FREE", self._seq)))
        return self._seq

    def flush_writes(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            asyncio.get_running_loop().call_soon(self._ack, batch)

    def _ack(self, batch: list[tuple[Any, PubAck]]) -> None:
        listener = self._listener
        if listener is not None:
            for receiver, ack in batch:
                listener(receiver, ack, None)

    def forget(self, token: int) -> None:
        pass

    async def close(self) -> None:
        pass


Runner = Callable[[list[Any]], bench.Sample]


def free_emit_8t(warm: list[Any], items: list[Any]) -> bench.Sample:
    """``emit()`` from 8 threads, NATS free."""
    prepare = bench.FEED_BY_KEY["built"].sink
    with JetStreamEventSink.from_publisher(FreePublisher(), "ceiling.free") as sink:
        emit = sink.emit

        def call(item: Any) -> None:
            emit(prepare(item))

        bench.drive_threads(EIGHT, warm, call)
        gc.collect()
        return bench.drive_threads(EIGHT, items, call)


def free_nowait(warm: list[Any], items: list[Any]) -> bench.Sample:
    """``emit_nowait()`` of every event then ``flush()``, NATS free."""
    feed = bench.FEED_BY_KEY["built"]
    with JetStreamEventSink.from_publisher(FreePublisher(), "ceiling.free") as sink:
        bench._burst(sink, feed, warm)
        gc.collect()
        return bench._burst(sink, feed, items)


def bare_8t(warm: list[Any], items: list[Any]) -> bench.Sample:
    """No library: build, hand to a loop thread, wait to be let go; 8 threads."""
    build = bench.FEED_BY_KEY["built"].raw
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bare-loop", daemon=True)
    thread.start()

    def call(item: Any) -> None:
        build(item)
        done = threading.Lock()
        done.acquire()
        loop.call_soon_threadsafe(done.release)
        done.acquire()

    try:
        bench.drive_threads(EIGHT, warm, call)
        gc.collect()
        return bench.drive_threads(EIGHT, items, call)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per way (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the event counts")
    args = parser.parse_args(argv)
    plan = bench.Plan.make(False, args.repeats, args.scale)
    feed = bench.FEED_BY_KEY["built"]
    best_raw = "raw_publish_async" if bench.HAS_PUBLISH_ASYNC else "raw_256_workers"
    samples: dict[str, list[bench.Sample]] = {}
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        target = bench.stage_stream(server.url, "BENCH_FILE", "file")

        def against_nats(key: str) -> Runner:
            way = bench.WAY_BY_KEY[key]

            def run(items: list[Any]) -> bench.Sample:
                bench.purge(target)
                warm = feed.items(0, plan.warmup)
                return way.run(target, target.subject(f"{key}.ceiling"), feed, warm, items)

            return run

        def free(way: Callable[[list[Any], list[Any]], bench.Sample]) -> Runner:
            return lambda items: way(feed.items(0, plan.warmup), items)

        groups: list[list[tuple[str, int, Runner]]] = [
            [
                ("raw_8", plan.concurrent, against_nats("raw_8")),
                ("emit_8t", plan.concurrent, against_nats("emit_8t")),
                ("free_emit_8t", plan.concurrent, free(free_emit_8t)),
                ("bare_8t", plan.concurrent, free(bare_8t)),
            ],
            [
                (best_raw, plan.bulk, against_nats(best_raw)),
                ("nowait_1t", plan.bulk, against_nats("nowait_1t")),
                ("free_nowait", plan.bulk, free(free_nowait)),
            ],
        ]
        for repeat in range(args.repeats):
            for group in groups:
                shift = repeat % len(group)
                for key, count, run in group[shift:] + group[:shift]:
                    sample = run(feed.items(plan.warmup, count))
                    samples.setdefault(key, []).append(sample)
                    print(
                        f"  [{repeat + 1}/{args.repeats}] {key:18} "
                        f"{sample.events_per_s:9,.0f} ev/s",
                        file=sys.stderr,
                        flush=True,
                    )

    def rate(key: str) -> float:
        return statistics.median(s.events_per_s for s in samples[key])

    print("\nevents built in the loop; events/s, median (min-max) of the repeats")
    for key, runs in samples.items():
        rates = [s.events_per_s for s in runs]
        print(f"  {key:18} {rate(key):9,.0f}  ({min(rates):,.0f}-{max(rates):,.0f})")
    print("\nratios of medians (bench.py's targets: 8 threads >= 0.8, pipelined >= 1.0)")
    for key, baseline in (
        ("emit_8t", "raw_8"),
        ("free_emit_8t", "raw_8"),
        ("bare_8t", "raw_8"),
        ("nowait_1t", best_raw),
        ("free_nowait", best_raw),
    ):
        print(f"  {key:18} / {baseline:18} {rate(key) / rate(baseline):5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
