"""How soon the circuit follows NATS back after an outage, measured on a real server.

The server is killed (-9) while one caller emits every 10 ms, stays down for 5, 30 or
90 s, and is started again on the same port and store. Measured per trial: the time from
the restarted server accepting TCP connections to the breaker's transition to
``Connected``. Five trials per outage length share one server; the figures are printed
(``pytest -s``) and quoted in the README's breaker section.

The issue's target is a p95 under 1 s. The assertion is looser (every trial under
:data:`ASSERTED_BOUND`), so that a loaded CI machine does not fail it, yet it fails
without the reconnect-triggered probe: after 30 s and 90 s of outage the scheduled probe
is up to 12.8 s and 51.2 s away. Long (about 11 minutes): marked ``chaos``.
"""

from __future__ import annotations

import math
import socket
import statistics
import threading
import time

import pytest

from cellos_sink_jetstream import (
    CloudEventV1,
    Connected,
    JetStreamEventSink,
    PublishError,
    Reconnecting,
)
from tests._polling import wait_until
from tests.conftest import StagedStream
from tests.test_chaos import Transitions

#: Outage lengths, in seconds.
OUTAGES = (5.0, 30.0, 90.0)
#: Trials per outage length.
TRIALS = 5
#: The caller's pace.
EMIT_INTERVAL = 0.01
#: The issue's target for the p95 of the recovery time.
TARGET_P95 = 1.0
#: What each trial must meet (see the module docstring).
ASSERTED_BOUND = 5.0


class Caller:
    """One thread emitting every :data:`EMIT_INTERVAL` seconds, counting its outcomes."""

    def __init__(self, sink: JetStreamEventSink) -> None:
        self.sink = sink
        self.stop = threading.Event()
        self.acked = 0
        self.failed = 0
        # When each emit refused (or failed) ended, on time.monotonic().
        self.failures: list[float] = []
        self.thread = threading.Thread(target=self._run, name="recovery-caller")

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            event = CloudEventV1(id=f"recovery-{n}", source="/chaos", type="cell.recovery")
            try:
                self.sink.emit(event)
            except PublishError:
                self.failures.append(time.monotonic())
            else:
                self.acked += 1
            n += 1
            self.stop.wait(EMIT_INTERVAL)


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (of 5 values: the largest)."""
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


@pytest.mark.chaos
@pytest.mark.parametrize("outage", OUTAGES)
def test_the_circuit_closes_within_a_second_of_nats_accepting_again(
    stream: StagedStream, outage: float
) -> None:
    server = stream.server
    transitions = Transitions()
    recoveries: list[float] = []
    refused_after_accept: list[int] = []
    with JetStreamEventSink.connect(
        stream.url, stream.subject("recovery"), publish_timeout=2.0, on_transition=transitions
    ) as sink:
        caller = Caller(sink)
        caller.thread.start()
        try:
            for trial in range(TRIALS):
                acked = caller.acked
                wait_until(lambda: caller.acked > acked, 30, f"trial {trial}: no emit acked")
                assert sink.debug_state() == Connected()
                killed = time.monotonic()
                server.kill()
                wait_until(
                    lambda: isinstance(sink.debug_state(), Reconnecting),
                    10,
                    f"trial {trial}: the circuit did not open",
                )
                # The outage itself: nothing to wait for but the clock.
                time.sleep(max(0.0, killed + outage - time.monotonic()))
                server.start(wait=False)
                wait_until(
                    lambda: accepts_connections(server.host, server.port),
                    30,
                    f"trial {trial}: the restarted server never accepted connections",
                )
                accepting = time.monotonic()
                wait_until(
                    lambda: transitions.last_closing(after=accepting) is not None,
                    200,
                    f"trial {trial}: the circuit never closed",
                )
                closing = transitions.last_closing(after=accepting)
                assert closing is not None
                recoveries.append(closing[0] - accepting)
                refused_after_accept.append(
                    sum(1 for at in caller.failures if accepting <= at <= closing[0])
                )
                server.wait_ready()
        finally:
            caller.stop.set()
            caller.thread.join(10)
    shown = ", ".join(f"{r:.3f}" for r in recoveries)
    verdict = "met" if p95(recoveries) <= TARGET_P95 else "NOT met"
    print(
        f"\n[recovery] outage {outage:g} s, {TRIALS} trials, a caller emitting every "
        f"{EMIT_INTERVAL * 1000:g} ms: circuit closed {statistics.median(recoveries):.3f} s "
        f"(median) / {p95(recoveries):.3f} s (p95) after the restarted server accepted "
        f"connections [{shown}]; emits refused meanwhile {refused_after_accept}; "
        f"target p95 <= {TARGET_P95:g} s: {verdict}"
    )
    slow = [r for r in recoveries if r > ASSERTED_BOUND]
    assert not slow, f"the circuit closed {slow} s after NATS accepted connections again"
