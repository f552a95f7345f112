"""Comparing what the demo emitted with what the stream holds, and reporting it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from .._breaker import BreakerState, Connected
from .._event import CloudEventV1
from .._sink import SinkStats
from ._demo_chaos import ServerRestart
from ._demo_producers import DEMO_ATTEMPTS, DemoCounters
from ._demo_stream import DemoStream
from ._exit_status import EXIT_OK, CliError
from ._output import out, plural
from ._streams import StoredMessage


@dataclass(frozen=True)
class DemoVerdict:
    """How the events read back compare with those emitted."""

    per_subject: dict[str, int]
    expected: int
    stored_once: int
    missing: int
    duplicated: int
    out_of_order_lanes: int

    @property
    def ok(self) -> bool:
        """Every event stored exactly once, each thread's events in emit order."""
        return (
            self.stored_once == self.expected
            and not self.missing
            and not self.duplicated
            and not self.out_of_order_lanes
        )


def verify_demo(lanes: list[list[CloudEventV1]], stored: list[StoredMessage]) -> DemoVerdict:
    """Compare what the producers emitted with what the stream holds."""
    copies: Counter[str] = Counter()
    seq_of: dict[str, int] = {}
    per_subject: Counter[str] = Counter()
    for message in stored:
        try:
            event_id = str(json.loads(message.data)["id"])
        except (ValueError, KeyError, TypeError):
            continue
        copies[event_id] += 1
        seq_of.setdefault(event_id, message.seq)
        per_subject[message.subject] += 1
    expected_ids = [event.id for lane in lanes for event in lane]
    out_of_order = 0
    for lane in lanes:
        seqs = [seq_of[event.id] for event in lane if event.id in seq_of]
        out_of_order += any(a >= b for a, b in zip(seqs, seqs[1:]))
    return DemoVerdict(
        per_subject=dict(sorted(per_subject.items())),
        expected=len(expected_ids),
        stored_once=sum(1 for i in expected_ids if copies[i] == 1),
        missing=sum(1 for i in expected_ids if copies[i] == 0),
        duplicated=sum(1 for i in expected_ids if copies[i] > 1),
        out_of_order_lanes=out_of_order,
    )


@dataclass(frozen=True)
class DemoRun:
    """What the producers and the sink report once the demo's events are published."""

    counters: DemoCounters
    state: BreakerState
    stats: SinkStats
    elapsed: float
    stream: DemoStream


def print_demo_report(run: DemoRun, verdict: DemoVerdict) -> None:
    counters, state, stats, elapsed = run.counters, run.state, run.stats, run.elapsed
    state_text = "Connected" if isinstance(state, Connected) else f"{state!r}"
    out("")
    out(
        f"published   {counters.acked} events in {elapsed:.2f} s "
        f"({counters.acked / max(elapsed, 1e-9):.0f} events/s)"
    )
    out(
        f"breaker     {state_text}; opened {plural(stats.breaker_openings, 'time')}, "
        f"{counters.fast_fails} fast fails (CircuitOpenError), "
        f"{counters.retried} failed publishes retried with the same id"
    )
    out(
        f"sink stats  published={stats.published} duplicates={stats.duplicates} "
        f"failed={stats.failed} fast_failed={stats.fast_failed} probes={stats.probes} "
        f"breaker_openings={stats.breaker_openings}"
    )
    out(f"read back   from stream {run.stream.name} with nats-py (ephemeral pull consumer):")
    width = max((len(subject) for subject in verdict.per_subject), default=0)
    for subject, count in verdict.per_subject.items():
        out(f"  {subject:<{width}}  {plural(count, 'event')}")
    order = "kept" if not verdict.out_of_order_lanes else "BROKEN"
    out(
        f"stored      {'exactly once' if verdict.ok else 'NOT exactly once'}: "
        f"{verdict.stored_once} of {verdict.expected} events once, {verdict.missing} missing, "
        f"{verdict.duplicated} duplicated; each thread's order {order}"
    )


def demo_exit(counters: DemoCounters, verdict: DemoVerdict, chaos: Optional[ServerRestart]) -> int:
    if counters.errors:
        raise CliError(f"a producer thread failed: {counters.errors[0]}")
    if chaos is not None and chaos.error is not None:
        raise CliError(f"chaos: {chaos.error}")
    if counters.lost:
        raise CliError(
            f"{plural(counters.lost, 'event')} never acknowledged in {DEMO_ATTEMPTS} attempts"
        )
    if not verdict.ok:
        raise CliError("the stream does not hold every event exactly once (see above)")
    return EXIT_OK
