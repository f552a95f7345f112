"""Benchmark the spooling sink beside the plain JetStream sink, on one real nats-server.

Run from the repository root::

    python benchmarks/spool_bench.py             # about 1-2 minutes on 2 cores
    python benchmarks/spool_bench.py --quick
    python benchmarks/spool_bench.py --json out.json

Three measurements, each beside the plain sink in the same run (ratios of medians over
``--repeats`` interleaved repeats, with the spread min-max):

* ``down``: NATS unreachable, 8 threads ``emit()`` through the spool with durability on
  (SQLite WAL, ``synchronous=FULL``): events/s, commits, the group-commit size (events
  per commit) and the commit cost (mostly the fsync) per event and per commit. Beside it,
  the plain sink's fail-fast ``emit()`` (it stores nothing) and a bare ``fsync`` of 4 kB
  on the same file system.
* ``replay``: a spool of N events drained into a running server (pipelined through
  ``emit_nowait``), against the plain sink's ``emit_nowait()`` + ``flush()`` of N events.
* ``latency``: NATS up and the spool empty: ``emit()`` p50 through the wrapper against
  the plain sink's ``emit()`` p50, one thread.

Events are ~400-byte CloudEvents with a fresh UUID each. The spool lives in a temporary
directory on the file system of ``--dir`` (default: the system's temp directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import nats
from nats.js import api

# Runnable as a plain script from a checkout: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    JetStreamEventSink,
    SpoolingEventSink,
)
from cellos_sink_jetstream._server import NatsServer

SUBJECT = "bench.spool.events"
STREAM = "BENCHSPOOL"

TARGET_DOWN_EVENTS_PER_S = 2000.0
TARGET_REPLAY_RATIO = 0.8
TARGET_LATENCY_RATIO = 1.1


def make_event(i: int) -> CloudEventV1:
    return CloudEventV1.from_dict(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/cellos/supervisor/node-07",
            "type": "dev.cellos.cell.lifecycle.started",
            "subject": f"cells/cell-{i % 97:04d}",
            "time": datetime.now(timezone.utc).isoformat(),
            "datacontenttype": "application/json",
            "tenantid": "acme-prod",
            "data": {
                "cellId": f"cell-{i % 97:04d}",
                "tenantId": "acme-prod",
                "phase": "started",
                "generation": i,
                "image": "acme/worker:1.42.3",
                "pid": 40_000 + i % 20_000,
            },
        }
    )


def unreachable_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{probe.getsockname()[1]}"


def stage(url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            await nc.jetstream().add_stream(
                api.StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.>", SUBJECT])
            )
        finally:
            await nc.close()

    asyncio.run(main())


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_threads(count: int, work: Callable[[int], None]) -> float:
    barrier = threading.Barrier(count + 1)

    def body(index: int) -> None:
        barrier.wait()
        work(index)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# -- NATS down --------------------------------------------------------------------------


def down_spool(root: Path, per_thread: int, threads: int) -> dict[str, float]:
    inner = JetStreamEventSink.connect(unreachable_url(), SUBJECT, wait=False)
    directory = Path(tempfile.mkdtemp(dir=root))
    events = [[make_event(t * per_thread + n) for n in range(per_thread)] for t in range(threads)]
    with SpoolingEventSink(inner, directory) as sink:
        sink.emit(make_event(-1))  # the first spooled event creates the pages; not timed
        store = sink._store
        commits0, events0, seconds0 = store.commits, store.committed_events, store.commit_seconds

        def work(index: int) -> None:
            for event in events[index]:
                sink.emit(event)

        elapsed = run_threads(threads, work)
        commits = store.commits - commits0
        committed = store.committed_events - events0
        commit_seconds = store.commit_seconds - seconds0
    total = per_thread * threads
    return {
        "events_per_s": total / elapsed,
        "commits": commits,
        "group_commit_size": committed / commits,
        "commit_us_per_event": commit_seconds / committed * 1e6,
        "commit_us_per_commit": commit_seconds / commits * 1e6,
    }


def down_plain(per_thread: int, threads: int) -> dict[str, float]:
    sink = JetStreamEventSink.connect(unreachable_url(), SUBJECT, wait=False)
    events = [[make_event(t * per_thread + n) for n in range(per_thread)] for t in range(threads)]

    def work(index: int) -> None:
        for event in events[index]:
            with contextlib.suppress(CircuitOpenError):  # dropped: the caller's problem
                sink.emit(event)

    elapsed = run_threads(threads, work)
    sink.close()
    return {"events_per_s": per_thread * threads / elapsed}


def bare_fsync_us(root: Path, count: int = 200) -> float:
    path = root / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"x" * 4096
    times = []
    try:
        for _ in range(count):
            os.write(fd, block)
            started = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1e6


# -- replay -----------------------------------------------------------------------------


def fill_spool(root: Path, count: int) -> Path:
    directory = Path(tempfile.mkdtemp(dir=root))
    inner = JetStreamEventSink.connect(unreachable_url(), SUBJECT, wait=False)
    with SpoolingEventSink(inner, directory) as sink:
        for n in range(count):
            sink.emit(make_event(n))
    return directory


def replay_spool(url: str, directory: Path, count: int) -> float:
    inner = JetStreamEventSink.connect(url, SUBJECT)
    started = time.perf_counter()
    with SpoolingEventSink(inner, directory) as sink:
        if not sink.drain(300):
            raise RuntimeError(f"the spool did not drain: {sink.stats()}")
        elapsed = time.perf_counter() - started
        assert sink.stats().replayed == count
    return count / elapsed


def nowait_plain(url: str, count: int, *, built: bool) -> float:
    """The plain sink's emit_nowait + flush; ``built``: the event object is made in the
    timed loop (as replay makes it from the spooled JSON, and as bench.py's targets do)."""
    events: list[Any] = [make_event(n).to_dict() for n in range(count)]
    if not built:
        events = [CloudEventV1.from_dict(d) for d in events]
    with JetStreamEventSink.connect(url, SUBJECT) as sink:
        started = time.perf_counter()
        for event in events:
            sink.emit_nowait(CloudEventV1.from_dict(event) if built else event)
        if not sink.flush(300):
            raise RuntimeError("flush timed out")
        return count / (time.perf_counter() - started)


# -- latency ----------------------------------------------------------------------------


# -- the run ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 5, quick 3)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    per_thread = 500 if args.quick else 1500
    replay_count = 5000 if args.quick else 20000
    latency_count = 500 if args.quick else 2000

    root = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    server = NatsServer(work_dir=root / "nats")
    server.start()
    results: dict[str, list[dict[str, float]]] = {
        "down_spool": [],
        "down_plain": [],
        "replay_spool": [],
        "nowait_plain": [],
        "nowait_plain_prebuilt": [],
        "latency": [],
    }
    try:
        stage(server.url)
        for repeat in range(repeats):
            print(f"repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
            spool_dir = fill_spool(root, replay_count)
            ways: list[Callable[[], None]] = [
                lambda: results["down_spool"].append(down_spool(root, per_thread, 8)),
                lambda: results["down_plain"].append(down_plain(per_thread, 8)),
                lambda d=spool_dir: results["replay_spool"].append(  # type: ignore[misc]
                    {"events_per_s": replay_spool(server.url, d, replay_count)}
                ),
                lambda: results["nowait_plain"].append(
                    {"events_per_s": nowait_plain(server.url, replay_count, built=True)}
                ),
                lambda: results["nowait_plain_prebuilt"].append(
                    {"events_per_s": nowait_plain(server.url, replay_count, built=False)}
                ),
                lambda: results["latency"].append(latency_pair(server.url, root, latency_count)),
            ]
            # Interleaved, with the order rotating from one repeat to the next.
            shift = repeat % len(ways)
            for way in ways[shift:] + ways[:shift]:
                way()
        fsync_us = bare_fsync_us(root)
    finally:
        server.close()

    def med(way: str, key: str) -> dict[str, float]:
        return spread([r[key] for r in results[way]])

    down = {key: med("down_spool", key) for key in results["down_spool"][0]}
    replay_ratios = [
        s["events_per_s"] / p["events_per_s"]
        for s, p in zip(results["replay_spool"], results["nowait_plain"])
    ]
    prebuilt_ratios = [
        s["events_per_s"] / p["events_per_s"]
        for s, p in zip(results["replay_spool"], results["nowait_plain_prebuilt"])
    ]
    latency_ratios = [r["wrapper_p50_us"] / r["plain_p50_us"] for r in results["latency"]]
    report = {
        "repeats": repeats,
        "down_spool": down,
        "down_plain_fail_fast": med("down_plain", "events_per_s"),
        "bare_fsync_4k_us": fsync_us,
        "replay_spool_events_per_s": med("replay_spool", "events_per_s"),
        "nowait_plain_events_per_s": med("nowait_plain", "events_per_s"),
        "nowait_plain_prebuilt_events_per_s": med("nowait_plain_prebuilt", "events_per_s"),
        "replay_ratio": spread(replay_ratios),
        "replay_ratio_vs_prebuilt": spread(prebuilt_ratios),
        "plain_emit_p50_us": med("latency", "plain_p50_us"),
        "wrapper_emit_p50_us": med("latency", "wrapper_p50_us"),
        "latency_ratio": spread(latency_ratios),
    }
    checks = {
        "down: spool emit from 8 threads >= 2,000 events/s": down["events_per_s"]["median"]
        >= TARGET_DOWN_EVENTS_PER_S,
        "replay >= 0.8x plain emit_nowait": report["replay_ratio"]["median"] >= TARGET_REPLAY_RATIO,
        "wrapper emit p50 <= 1.1x plain emit p50": report["latency_ratio"]["median"]
        <= TARGET_LATENCY_RATIO,
    }
    print_report(report, checks)
    if args.json:
        args.json.write_text(json.dumps({"report": report, "checks": checks}, indent=2))
    return 0 if all(checks.values()) else 1


def latency_pair(url: str, root: Path, count: int) -> dict[str, float]:
    """p50 of emit() on the plain sink and through the wrapper, alternating event by event
    (plain, wrapper, plain, ...) so that both see the same machine noise."""
    plain = JetStreamEventSink.connect(url, SUBJECT)
    wrapped_inner = JetStreamEventSink.connect(url, SUBJECT)
    wrapper = SpoolingEventSink(wrapped_inner, Path(tempfile.mkdtemp(dir=root)))
    events = [make_event(n) for n in range(2 * count + 100)]
    plain_times: list[float] = []
    wrapper_times: list[float] = []
    try:
        for event in events[:100]:  # warm-up
            plain.emit(event)
            wrapper.emit(event)
        for n in range(count):
            for sink, times in ((plain, plain_times), (wrapper, wrapper_times)):
                event = events[100 + 2 * n + (sink is wrapper)]
                started = time.perf_counter()
                sink.emit(event)
                times.append(time.perf_counter() - started)
        assert wrapper.stats().spooled == 0, "the server was up: nothing should be spooled"
    finally:
        wrapper.close()
        plain.close()
    return {
        "plain_p50_us": statistics.median(plain_times) * 1e6,
        "wrapper_p50_us": statistics.median(wrapper_times) * 1e6,
    }


def fmt(s: dict[str, float], unit: str = "", digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f}{unit} (spread {s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def print_report(report: dict[str, Any], checks: dict[str, bool]) -> None:
    down = report["down_spool"]
    print(f"\nSpool benchmark: medians of {report['repeats']} interleaved repeats (spread min-max)")
    print("\nNATS down, 8 threads, durability on (WAL, synchronous=FULL):")
    print(f"  spool emit            {fmt(down['events_per_s'], ' ev/s')}")
    print(f"  plain emit fail-fast  {fmt(report['down_plain_fail_fast'], ' ev/s')} (drops all)")
    print(f"  group-commit size     {fmt(down['group_commit_size'], ' events/commit', 1)}")
    print(f"  commit (fsync) cost   {fmt(down['commit_us_per_event'], ' us/event', 1)}")
    print(f"                        {fmt(down['commit_us_per_commit'], ' us/commit')}")
    print(f"  bare fsync of 4 kB    {report['bare_fsync_4k_us']:,.0f} us")
    print("\nReplay (pipelined emit_nowait) vs the plain sink's emit_nowait + flush:")
    print(f"  spool replay          {fmt(report['replay_spool_events_per_s'], ' ev/s')}")
    print(f"  plain emit_nowait     {fmt(report['nowait_plain_events_per_s'], ' ev/s')} (built)")
    print(f"  ratio                 {fmt(report['replay_ratio'], 'x', 2)}")
    prebuilt = report["nowait_plain_prebuilt_events_per_s"]
    print(f"  plain, prebuilt       {fmt(prebuilt, ' ev/s')}")
    print(f"  ratio vs prebuilt     {fmt(report['replay_ratio_vs_prebuilt'], 'x', 2)}")
    print("\nNATS up, spool empty, emit() p50, 1 thread:")
    print(f"  plain emit            {fmt(report['plain_emit_p50_us'], ' us', 1)}")
    print(f"  through the spool     {fmt(report['wrapper_emit_p50_us'], ' us', 1)}")
    print(f"  ratio                 {fmt(report['latency_ratio'], 'x', 3)}")
    print("\nTargets:")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")


if __name__ == "__main__":
    sys.exit(main())
