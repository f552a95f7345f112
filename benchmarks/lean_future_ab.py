"""Does ``LeanFuture`` still pay? ``emit_nowait()`` + ``flush()`` with it and without it.

Interleaved A/B on one server (the order alternates each round, so drift in the machine's
load hits both sides alike): ``python -m benchmarks.lean_future_ab [EVENTS] [ROUNDS]``.
Prints events/s per run, the medians and their ratio (README, section Performance).
"""

from __future__ import annotations

import statistics
import sys

from benchmarks import bench
from cellos_sink_jetstream import _lean_future
from cellos_sink_jetstream._server import NatsServer


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    feed = bench.FEED_BY_KEY["built"]
    rates: dict[bool, list[float]] = {True: [], False: []}
    with NatsServer(max_mem=1024**3, max_file=8 * 1024**3) as server:
        target = bench.stage_stream(server.url, "BENCH", "memory")
        for n in range(rounds):
            for lean in (True, False) if n % 2 == 0 else (False, True):
                _lean_future._USE_LEAN = lean  # read by make_future() for every new future
                bench.purge(target)
                sample = bench.sink_emit_nowait(
                    target, target.subject("ab"), feed, list(range(2000)), list(range(events))
                )
                rates[lean].append(sample.events / sample.seconds)
                print(f"round {n} lean={lean}: {rates[lean][-1]:,.0f} events/s", flush=True)
    lean, stock = statistics.median(rates[True]), statistics.median(rates[False])
    wins = sum(a > b for a, b in zip(rates[True], rates[False]))
    print(f"median with LeanFuture {lean:,.0f} events/s, stock Future {stock:,.0f} events/s")
    print(f"ratio {lean / stock:.2f}; LeanFuture faster in {wins} of {rounds} rounds")


if __name__ == "__main__":
    main()
