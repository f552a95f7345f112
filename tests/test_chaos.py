"""Fault injection against real nats-server processes: kill -9, freezes, outages, forks.

Every test drives the public sink API from plain threads while it breaks the server
underneath (``NatsServer.kill()`` is SIGKILL, :func:`frozen` is SIGSTOP/SIGCONT), then
judges the outcome by reading the stream back, per event id. The shared oracle
(:func:`check_oracle`, with :func:`wait_for_recovery`):

* every event whose ``emit()``/``publish()`` returned is in the stream exactly once (and
  at the sequence its ack named);
* an event whose emit raised :class:`PublishTimeoutError` is there at most once; one that
  got any other ``PublishError`` is not there (README: "the event was not stored"), nor is
  one refused by the open circuit; nothing is there that nobody emitted;
* each thread's events are stored in its emit order;
* no emit took longer than its timeout + 0.5 s;
* after the last restart the breaker is ``Connected`` again within the backoff of the
  attempts it reached plus 2 s.

Loads are sized so that this file runs in about 90 s on two cores. The long tests are
marked ``chaos``; ``pytest -m "not chaos"`` skips them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import decimal
import functools
import gc
import itertools
import json
import logging
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.api import StorageType

from cellos_sink_jetstream import (
    BreakerState,
    CircuitOpenError,
    CloudEventV1,
    Connected,
    ConnectError,
    InvalidEventError,
    InvalidSubjectError,
    JetStreamEventSink,
    NoStreamError,
    PayloadTooLargeError,
    PubAck,
    PublishError,
    PublishTimeoutError,
    Reconnecting,
    SinkClosedError,
    SinkError,
)
from tests import chaos_child
from tests._nats import (
    connect,
    read_stream,
    replica_messages,
    stage_stream,
    stream_info,
    stream_leader,
    wait_for_replicas_in_step,
)
from tests._polling import wait_until
from tests._servers import NatsCluster, NatsServer, frozen
from tests.conftest import DUPLICATE_WINDOW, ServerFactory, StagedStream

#: Publish timeout of the sinks under load: short, so that a dead server costs little.
PUBLISH_TIMEOUT = 2.0
#: How much longer than its timeout any single emit may take.
EMIT_SLACK = 0.5
#: Slack on top of the backoff before the breaker must be ``Connected`` after a restart.
RECOVERY_SLACK = 2.0
#: Every thread of a sink has a name starting with this.
SINK_THREAD_PREFIX = "cellos-sink-jetstream"
#: The subject template of most sinks here; :func:`make_event` spreads events over 3 tenants.
TENANT_SUBJECT = "cellos.events.{tenantId}"
#: Root of the project, for child processes.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def expected_backoff(attempt: int) -> float:
    """The issue's breaker backoff: 0.1 s * 2 ** attempt, capped at 180 s."""
    return min(0.1 * 2 ** min(attempt, 64), 180.0)


def make_event(event_id: str, **data: Any) -> CloudEventV1:
    """An event that depends on its id only (plus ``data``), so a re-emit is identical.

    Its tenant, one of three, is derived from the id, so events spread over subjects.
    """
    return CloudEventV1(
        id=event_id,
        source="/chaos",
        type="cell.chaos",
        data={"id": event_id, **data},
        extensions={"tenantid": f"tenant{sum(map(ord, event_id)) % 3}"},
    )


def sink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(SINK_THREAD_PREFIX)]


def sockets_to(port: int) -> int:
    """Count this process's open TCP sockets whose remote port is ``port`` (Linux /proc)."""
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listing itself is gone already
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[9] in inodes:
                    count += 1
    return count


def connections_named(server: NatsServer, name: str, state: str = "open") -> list[dict[str, Any]]:
    """The server's view (``/connz``) of the client connections called ``name``."""
    answer = server.monitor(f"/connz?state={state}&limit=4096")
    return [c for c in answer.get("connections") or [] if c.get("name") == name]


class Transitions:
    """An ``on_transition`` callback that records every breaker transition with its time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[float, BreakerState, BreakerState]] = []

    def __call__(self, old: BreakerState, new: BreakerState) -> None:
        with self._lock:
            self.items.append((time.monotonic(), old, new))

    def snapshot(self) -> list[tuple[float, BreakerState, BreakerState]]:
        with self._lock:
            return list(self.items)

    def last_closing(self, after: float) -> Optional[tuple[float, Reconnecting]]:
        """When the circuit last closed (if it did after ``after``), and from which state."""
        for at, old, new in reversed(self.snapshot()):
            if at >= after and isinstance(new, Connected) and isinstance(old, Reconnecting):
                return at, old
        return None

    def max_attempt(self) -> int:
        return max(
            (new.attempt for _, _, new in self.snapshot() if isinstance(new, Reconnecting)),
            default=-1,
        )


# -- outcomes and the oracle ----------------------------------------------------------


@dataclass
class Outcomes:
    """What each emit ended with, per event id."""

    #: Acknowledged: id -> sequence from the ack (0 when ``emit()`` returned no ack).
    acked: dict[str, int] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)
    #: Any other ``PublishError`` (connection down, JetStream refused ...).
    failed: list[str] = field(default_factory=list)
    fast_failed: list[str] = field(default_factory=list)
    #: Any other error: id -> "Type: message". None is expected under load.
    other: dict[str, str] = field(default_factory=dict)
    slowest: float = 0.0
    slowest_what: str = ""

    def merge(self, more: Outcomes) -> None:
        self.acked.update(more.acked)
        self.timed_out += more.timed_out
        self.failed += more.failed
        self.fast_failed += more.fast_failed
        self.other.update(more.other)
        if more.slowest > self.slowest:
            self.slowest, self.slowest_what = more.slowest, more.slowest_what

    def emitted(self) -> set[str]:
        return {
            *self.acked,
            *self.timed_out,
            *self.failed,
            *self.fast_failed,
            *self.other,
        }

    def not_acked(self) -> list[str]:
        return [*self.timed_out, *self.failed, *self.fast_failed]


def emit_and_record(
    sink: JetStreamEventSink, event: CloudEventV1, outcomes: Outcomes, *, with_ack: bool
) -> Optional[BaseException]:
    """Emit ``event`` (``publish()`` when ``with_ack``), record how it ended, return the error."""
    started = time.monotonic()
    error: Optional[BaseException] = None
    try:
        if with_ack:
            outcomes.acked[event.id] = sink.publish(event).seq
        else:
            sink.emit(event)
            outcomes.acked[event.id] = 0
    except CircuitOpenError as exc:
        outcomes.fast_failed.append(event.id)
        error = exc
    except PublishTimeoutError as exc:
        outcomes.timed_out.append(event.id)
        error = exc
    except PublishError as exc:
        outcomes.failed.append(event.id)
        error = exc
    except SinkError as exc:
        outcomes.other[event.id] = f"{type(exc).__name__}: {exc}"
        error = exc
    finally:
        took = time.monotonic() - started
        if took > outcomes.slowest:
            outcomes.slowest = took
            outcomes.slowest_what = f"{event.id} ({type(error).__name__ if error else 'acked'})"
    return error


class Producer:
    """A thread emitting ``count`` events one after the other, recording every outcome.

    After an error it goes on with the next event. On :class:`CircuitOpenError` it first
    waits ``retry_after`` (at least 2 ms, at most 50 ms) as a well-behaved caller would,
    so that an outage does not burn through all its events in a few milliseconds.
    """

    def __init__(self, sink: JetStreamEventSink, prefix: str, number: int, count: int) -> None:
        self.sink = sink
        self.prefix = prefix
        self.number = number
        self.count = count
        self.outcomes = Outcomes()
        self.done = 0
        self.crash: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=f"chaos-{prefix}-{number}")

    def event(self, n: int) -> CloudEventV1:
        return make_event(f"{self.prefix}-{self.number}-{n}")

    def _run(self) -> None:
        try:
            # Half the producers use emit(), the other half publish() to check ack seqs.
            with_ack = self.number % 2 == 1
            for n in range(self.count):
                error = emit_and_record(self.sink, self.event(n), self.outcomes, with_ack=with_ack)
                self.done = n + 1
                if isinstance(error, CircuitOpenError):
                    time.sleep(min(max(error.retry_after, 0.002), 0.05))
        except BaseException as exc:  # anything but a SinkError is a bug: report it
            self.crash = exc


class Load:
    """``threads`` producers of ``per_thread`` events each."""

    def __init__(self, sink: JetStreamEventSink, prefix: str, threads: int, per_thread: int):
        self.producers = [Producer(sink, prefix, k, per_thread) for k in range(threads)]
        self.total = threads * per_thread

    def start(self) -> Load:
        for producer in self.producers:
            producer.thread.start()
        return self

    def progress(self) -> int:
        return sum(p.done for p in self.producers)

    def timed_out(self) -> int:
        return sum(len(p.outcomes.timed_out) for p in self.producers)

    def running(self) -> bool:
        return any(p.thread.is_alive() for p in self.producers)

    def join(self, timeout: float) -> Outcomes:
        deadline = time.monotonic() + timeout
        for producer in self.producers:
            producer.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [p.thread.name for p in self.producers if p.thread.is_alive()]
        assert not stuck, f"producers still running after {timeout:g}s: {stuck}"
        merged = Outcomes()
        for producer in self.producers:
            assert producer.crash is None, "".join(
                traceback.format_exception(
                    type(producer.crash), producer.crash, producer.crash.__traceback__
                )
            )
            merged.merge(producer.outcomes)
        return merged


@dataclass
class Stored:
    """The stream's content, per event id."""

    counts: Counter[str]
    seqs: dict[str, int]

    @classmethod
    def read(cls, servers: Any, stream: str) -> Stored:
        messages: list[Msg] = read_stream(servers, stream, timeout=20.0, retry_for=20.0)
        counts: Counter[str] = Counter()
        seqs: dict[str, int] = {}
        for msg in messages:
            assert msg.headers is not None
            event_id = msg.headers["Nats-Msg-Id"]
            assert json.loads(msg.data)["id"] == event_id
            counts[event_id] += 1
            seqs[event_id] = msg.metadata.sequence.stream
        return cls(counts, seqs)


def check_oracle(label: str, outcomes: Outcomes, stored: Stored, publish_timeout: float) -> None:
    """Judge a chaotic run by the stream's content (see the module docstring); print counts."""
    emitted = outcomes.emitted()
    timed_out_stored = sum(1 for i in outcomes.timed_out if stored.counts[i])
    failed_stored = sum(1 for i in outcomes.failed if stored.counts[i])
    fast_failed_stored = sum(1 for i in outcomes.fast_failed if stored.counts[i])
    print(
        f"\n[{label}] oracle: emitted={len(emitted)} acked={len(outcomes.acked)} "
        f"timed_out={len(outcomes.timed_out)} failed={len(outcomes.failed)} "
        f"fast_failed={len(outcomes.fast_failed)} other={len(outcomes.other)} "
        f"found_in_stream={sum(stored.counts.values())} "
        f"(timed out but stored={timed_out_stored}, failed but stored={failed_stored}, "
        f"fast-failed but stored={fast_failed_stored}) "
        f"slowest_emit={outcomes.slowest:.3f}s [{outcomes.slowest_what}]"
    )
    duplicates = {i: n for i, n in stored.counts.items() if n > 1}
    assert not duplicates, (
        f"{len(duplicates)} events stored more than once: {list(duplicates)[:10]}"
    )
    lost = [i for i in outcomes.acked if stored.counts[i] != 1]
    assert not lost, f"{len(lost)} acknowledged events are not in the stream: {lost[:10]}"
    wrong_seq = [
        (i, seq, stored.seqs[i])
        for i, seq in outcomes.acked.items()
        if seq and seq != stored.seqs[i]
    ]
    assert not wrong_seq, f"acks named another sequence than the stream has: {wrong_seq[:10]}"
    sent_anyway = [i for i in outcomes.fast_failed if stored.counts[i]]
    assert not sent_anyway, f"CircuitOpenError said nothing was sent, yet stored: {sent_anyway}"
    # README: "Every other PublishError means the event was not stored."
    stored_anyway = [i for i in outcomes.failed if stored.counts[i]]
    assert not stored_anyway, f"a PublishError said not stored, yet stored: {stored_anyway[:10]}"
    strangers = set(stored.counts) - emitted
    assert not strangers, f"stored events nobody emitted: {sorted(strangers)[:10]}"
    assert not outcomes.other, f"unexpected errors: {list(outcomes.other.items())[:5]}"
    # Events emitted from one thread are stored in emit order (ids end in "-<thread>-<n>").
    by_thread: dict[str, list[tuple[int, int]]] = {}
    for event_id, seq in stored.seqs.items():
        thread, _, n = event_id.rpartition("-")
        if n.isdigit():
            by_thread.setdefault(thread, []).append((seq, int(n)))
    for thread, pairs in by_thread.items():
        numbers = [n for _, n in sorted(pairs)]
        assert numbers == sorted(numbers), f"{thread}: stored out of emit order"
    assert outcomes.slowest <= publish_timeout + EMIT_SLACK, (
        f"an emit took {outcomes.slowest:.3f}s > timeout {publish_timeout}s + {EMIT_SLACK}s: "
        f"{outcomes.slowest_what}"
    )


def wait_for_recovery(
    sink: JetStreamEventSink,
    transitions: Transitions,
    fault: float,
    since: float,
    load: Load,
    probes: Outcomes,
    label: str,
    what: str = "the restart",
) -> None:
    """Wait for ``Connected``; it must come within the backoff reached + 2 s of ``since``.

    ``fault`` is when the last fault was injected (the circuit may open from then on),
    ``since`` when the server was back. While the load still runs, its emits drive the
    probes; once it is done, this emits probe events itself (recorded in ``probes``, which
    join the oracle).
    """
    deadline = since + 60.0
    probe_numbers = itertools.count()
    while sink.debug_state() != Connected():
        assert time.monotonic() < deadline, f"[{label}] the breaker never closed again"
        if not load.running():
            event = make_event(f"{label}-probe-{next(probe_numbers)}")
            emit_and_record(sink, event, probes, with_ack=True)
        time.sleep(0.01)
    closing = transitions.last_closing(after=fault)
    if closing is None:
        print(f"\n[{label}] the breaker did not open after the fault")
        return
    closed_at, closed_from = closing
    took = closed_at - since
    bound = expected_backoff(closed_from.attempt) + RECOVERY_SLACK
    print(
        f"\n[{label}] Connected {took:.2f}s after {what}, from attempt "
        f"{closed_from.attempt} (bound {bound:.2f}s); openings={sink.stats().breaker_openings}"
    )
    assert took <= bound, (
        f"[{label}] Connected only {took:.2f}s after {what}; attempt "
        f"{closed_from.attempt} allows {bound:.2f}s"
    )


def kill_and_restart(
    server: NatsServer, sink: JetStreamEventSink, load: Load, rounds: int
) -> tuple[float, float]:
    """SIGKILL and restart ``server`` ``rounds`` times while ``load`` runs.

    Round r starts once (r + 1) / (rounds + 2) of the load is done, and restarts the server
    once the breaker reached attempt r + 1, so later rounds also see failed probes.
    Returns when the last kill happened and when the last restart finished (server ready).
    """
    killed = 0.0
    for round_no in range(rounds):
        threshold = load.total * (round_no + 1) // (rounds + 2)
        wait_until(lambda: load.progress() >= threshold, 120, "the load got stuck")
        assert load.running(), "the load finished before the kills; raise per_thread"
        server.kill()
        killed = time.monotonic()

        def reached(attempt: int = round_no + 1) -> bool:
            state = sink.debug_state()
            return isinstance(state, Reconnecting) and state.attempt >= attempt

        wait_until(reached, 30, f"round {round_no}: breaker never reached attempt {round_no + 1}")
        server.start()
    return killed, time.monotonic()


# -- 1. kill -9 under load --------------------------------------------------------------


@pytest.mark.chaos
def test_kill_9_under_load_loses_no_acknowledged_event(stream: StagedStream) -> None:
    info = stream_info(stream.url, stream.name)
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == DUPLICATE_WINDOW
    transitions = Transitions()
    probes = Outcomes()
    with JetStreamEventSink.connect(
        stream.url,
        TENANT_SUBJECT,
        stream=stream.name,
        publish_timeout=PUBLISH_TIMEOUT,
        on_transition=transitions,
    ) as sink:
        load = Load(sink, "kill", threads=8, per_thread=5000).start()
        killed, restarted = kill_and_restart(stream.server, sink, load, rounds=3)
        wait_for_recovery(sink, transitions, killed, restarted, load, probes, "kill-9")
        outcomes = load.join(timeout=180)
        openings = sink.stats().breaker_openings
    outcomes.merge(probes)
    check_oracle("kill-9", outcomes, Stored.read(stream.url, stream.name), PUBLISH_TIMEOUT)
    assert openings >= 3, f"3 kills but the breaker opened {openings} times"
    assert transitions.max_attempt() >= 3
    assert len(outcomes.acked) >= load.total // 2, "most events should have been acknowledged"


# -- 2. re-emitting what timed out or failed --------------------------------------------


@pytest.mark.chaos
def test_re_emit_after_timeouts_and_failures_never_stores_a_second_copy(
    stream: StagedStream,
) -> None:
    publish_timeout = 1.0
    transitions = Transitions()
    probes = Outcomes()
    started = time.monotonic()
    with JetStreamEventSink.connect(
        stream.url,
        TENANT_SUBJECT,
        stream=stream.name,
        publish_timeout=publish_timeout,
        on_transition=transitions,
    ) as sink:
        load = Load(sink, "re", threads=4, per_thread=2500).start()
        # A hung server: publishes are written but not answered, so they time out; when it
        # thaws it stores them, and their acks arrive after their callers gave up.
        wait_until(lambda: load.progress() >= 2000, 60, "load stuck before the freeze")
        with frozen(stream.server):
            wait_until(
                lambda: load.timed_out() >= 1 and sink.debug_state() != Connected(),
                10,
                "no emit timed out against the frozen server",
            )
        wait_until(lambda: load.progress() >= 5000, 60, "load stuck after the freeze")
        # A crash: what was in flight fails or times out, then the circuit fails fast.
        stream.server.kill()
        killed = time.monotonic()
        wait_until(lambda: sink.debug_state() != Connected(), 10, "breaker stayed closed")
        stream.server.start()
        wait_for_recovery(sink, transitions, killed, time.monotonic(), load, probes, "re-emit")
        outcomes = load.join(timeout=120)
        outcomes.merge(probes)
        before = Stored.read(stream.url, stream.name)
        check_oracle("re-emit, first pass", outcomes, before, publish_timeout)

        unacked = outcomes.not_acked()
        landed = [i for i in unacked if before.counts[i]]
        print(f"re-emitting {len(unacked)} unacknowledged events, {len(landed)} had landed")
        assert outcomes.timed_out, "the freeze produced no PublishTimeoutError"
        assert landed, "no timed-out event landed after the thaw; the duplicate path is untested"
        sample_acked = list(outcomes.acked)[:: max(1, len(outcomes.acked) // 200)]
        for event_id in [*unacked, *sample_acked]:
            ack = sink.publish(make_event(event_id))
            if before.counts[event_id]:
                assert ack.duplicate, f"{event_id} was stored already; the ack must say so"
                assert ack.seq == before.seqs[event_id]
            else:
                assert not ack.duplicate, f"{event_id} was not stored, yet acked as duplicate"
        # Deduplication only holds within the duplicate window.
        assert time.monotonic() - started < DUPLICATE_WINDOW - 10
    after = Stored.read(stream.url, stream.name)
    assert dict(after.counts) == dict.fromkeys(outcomes.emitted(), 1)
    for event_id, seq in before.seqs.items():
        assert after.seqs[event_id] == seq


# -- 3. clustered JetStream: the stream leader dies ---------------------------------------


@pytest.mark.chaos
def test_killing_the_stream_leader_of_an_r3_stream_loses_no_acknowledged_event(
    cluster3: NatsCluster,
) -> None:
    stage_stream(
        cluster3.urls,
        "CELLOS",
        ["cellos.events.>"],
        num_replicas=3,
        storage="file",
        duplicate_window=DUPLICATE_WINDOW,
    )
    leader = stream_leader(cluster3.urls, "CELLOS")
    transitions = Transitions()
    probes = Outcomes()
    with JetStreamEventSink.connect(
        ",".join(cluster3.urls),
        TENANT_SUBJECT,
        stream="CELLOS",
        publish_timeout=PUBLISH_TIMEOUT,
        on_transition=transitions,
    ) as sink:
        load = Load(sink, "ha", threads=8, per_thread=2500).start()
        wait_until(lambda: load.progress() >= load.total // 4, 120, "load stuck")
        assert load.running()
        cluster3.kill(leader)
        killed = time.monotonic()
        survivors = [s.url for s in cluster3.running]
        new_leader = stream_leader(survivors, "CELLOS", timeout=30)
        assert new_leader != leader
        elected = time.monotonic()  # (or a little later: stream_leader polls)
        wait_for_recovery(
            sink, transitions, killed, elected, load, probes, "r3-leader", "the election"
        )
        outcomes = load.join(timeout=180)
    outcomes.merge(probes)
    wait_for_replicas_in_step(cluster3, "CELLOS")
    stored = Stored.read(survivors, "CELLOS")
    check_oracle("r3-leader", outcomes, stored, PUBLISH_TIMEOUT)
    # Back to three replicas: the restarted one must catch up with exactly that content.
    cluster3.restart(leader)
    wait_for_replicas_in_step(cluster3, "CELLOS")
    assert replica_messages(cluster3, "CELLOS") == dict.fromkeys(
        [s.server_name for s in cluster3], sum(stored.counts.values())
    )
    assert Stored.read(cluster3.urls, "CELLOS") == stored


# -- 4. lifecycle: close() against a hung server, and exiting without close() ----------


@pytest.mark.parametrize("backlog", [0, 200], ids=["few-in-flight", "socket-buffers-full"])
@pytest.mark.fast_path  # see tox env publicpath
def test_close_while_emits_hang_on_a_frozen_server_leaves_no_thread_or_socket(
    stream: StagedStream, backlog: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``close()`` ends blocked emits in time and releases the thread and the connection.

    With ``backlog``, 200 queued 60 kB events also fill the socket buffers towards the
    frozen server, as they would towards a server that stopped reading. What the closed
    sink leaves to the garbage collector must be quiet as well.
    """
    close_timeout = 1.5
    name = f"chaos-close-{backlog}"
    server = stream.server
    assert sink_threads() == []
    problems: list[str] = []
    errors: list[list[BaseException]] = [[] for _ in range(4)]
    queued: list[concurrent.futures.Future[PubAck]] = []
    ended: list[float] = []
    sink = JetStreamEventSink.connect(
        stream.url, stream.subject("close"), publish_timeout=30.0, name=name
    )
    try:
        sink.emit(make_event("close-before"))
        assert len(connections_named(server, name)) == 1
        assert sockets_to(server.port) == 1
        with frozen(server):
            blocked = [
                threading.Thread(
                    target=_emit_expecting_error, args=(sink, f"close-{n}", out, ended)
                )
                for n, out in enumerate(errors)
            ]
            for thread in blocked:
                thread.start()
            queued += [
                sink.emit_nowait(make_event(f"close-queued-{n}", blob="x" * 60_000))
                for n in range(backlog)
            ]
            in_flight = functools.partial(_has_in_flight, sink, 4 + backlog)
            wait_until(in_flight, 10, "emits never got in flight")
            del in_flight
            started = time.monotonic()
            sink.close(timeout=close_timeout)
            took = time.monotonic() - started
            print(f"\nclose() took {took:.3f}s with {4 + backlog} events in flight")
            if took > close_timeout + 0.25:
                problems.append(f"close(timeout={close_timeout}) took {took:.3f}s")
            if sink_threads():
                problems.append(f"sink thread alive right after close(): {sink_threads()}")
            if sockets_to(server.port):
                problems.append("a socket to the server is open right after close()")
            for thread in blocked:
                thread.join(close_timeout)
            assert not any(t.is_alive() for t in blocked), "an emit outlived close()"
            # The blocked emits end within the close timeout (plus the caller's grace).
            assert max(ended) - started <= close_timeout + 0.25
            # Still frozen: whatever the sink does late, it must not need the server.
            wait_until(lambda: not sink_threads(), 15, "the sink's thread never ended")
            if sockets_to(server.port):
                problems.append("the socket to the server stays open (leaked) after close()")
        for out in errors:
            assert len(out) == 1
            assert isinstance(out[0], (SinkClosedError, PublishError)), repr(out[0])
        # (No loop variable: a leftover reference to a future would keep the sink alive.)
        assert all(f.done() for f in queued)
        assert [f for f in queued if not isinstance(f.exception(), SinkError)] == []
        try:
            wait_until(lambda: not connections_named(server, name), 5, "")
        except AssertionError:
            problems.append("the server still lists the sink's connection (/connz) 5s later")
    finally:
        # Never leave a thread or garbage that would make a later test fail.
        wait_until(lambda: not sink_threads(), 15, "the sink's thread never ended")
        del sink
        for out in errors:  # their tracebacks hold the sink
            out.clear()
        queued.clear()  # their done-callbacks hold the sink
        with unraisable_collected() as unraisable:
            for _ in range(5):  # finalizers that run free more garbage for the next pass
                gc.collect()
    problems += [f"garbage collection after close(): {text}" for text in unraisable]
    problems += [
        f"logged after close(): {r.getMessage().splitlines()[0]}"
        for r in caplog.records
        if "Task was destroyed" in r.getMessage()
    ]
    assert not problems, "close() against a hung server:\n- " + "\n- ".join(problems)
    assert len(connections_named(server, name, state="closed")) == 1


@contextlib.contextmanager
def unraisable_collected() -> Iterator[list[str]]:
    """Collect what ``sys.unraisablehook`` reports inside the block, instead of printing it."""
    found: list[str] = []
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        found.append(
            f"{info.err_msg or 'Exception ignored in'} {info.object!r}: {info.exc_value!r}"
        )

    sys.unraisablehook = hook
    try:
        yield found
    finally:
        sys.unraisablehook = previous


def _has_in_flight(sink: JetStreamEventSink, count: int) -> bool:
    return sink.stats().in_flight == count


def _emit_expecting_error(
    sink: JetStreamEventSink, event_id: str, errors: list[BaseException], ended: list[float]
) -> None:
    try:
        sink.emit(make_event(event_id))
    except SinkError as exc:
        errors.append(exc)
    finally:
        ended.append(time.monotonic())


@pytest.mark.parametrize("mode", ["healthy", "hung", "hung-backlog"])
@pytest.mark.fast_path  # see tox env publicpath
def test_a_process_that_never_calls_close_exits_quietly_and_in_time(
    stream: StagedStream, mode: str
) -> None:
    """The ``atexit`` hook closes the sink: no noise on stderr, exit within exit_timeout + 1 s.

    ``hung``: the server is frozen while the child exits with events in flight and a
    daemon thread blocked in ``emit()``; ``hung-backlog`` also fills the socket buffers.
    """
    publish_timeout = 2.0
    exit_timeout = 2.0  # the exit flush's bound: the sink's default exit_timeout
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "default"}
    command = [
        sys.executable,
        "-m",
        "tests.chaos_child",
        stream.url,
        stream.subject("exit"),
        f"exit-{mode}",
        mode,
        str(publish_timeout),
    ]
    lines: queue.Queue[bytes] = queue.Queue()
    stderr_lines: queue.Queue[bytes] = queue.Queue()
    pipes = subprocess.PIPE
    with subprocess.Popen(
        command, cwd=str(PROJECT_ROOT), env=env, stdin=pipes, stdout=pipes, stderr=pipes
    ) as child:
        assert child.stdin is not None
        readers = [
            threading.Thread(target=_pump_lines, args=(child.stdout, lines)),
            threading.Thread(target=_pump_lines, args=(child.stderr, stderr_lines)),
        ]
        for reader in readers:
            reader.start()
        try:
            assert lines.get(timeout=30) == b"READY\n"
            with frozen(stream.server) if mode != "healthy" else contextlib.nullcontext():
                child.stdin.write(b"go\n")
                child.stdin.close()
                assert lines.get(timeout=10) == b"EXITING\n"
                exiting = time.monotonic()
                child.wait(timeout=publish_timeout + 10)
                took = time.monotonic() - exiting
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            for reader in readers:
                reader.join(10)
    stderr = b"".join(_drain(stderr_lines)).decode(errors="replace")
    print(f"\nchild ({mode}) exited {took:.3f}s after EXITING, status {child.returncode}")
    assert child.returncode == 0, stderr
    assert took <= exit_timeout + 1.0, f"exit took {took:.2f}s\n{stderr}"
    for noise in (
        "Task was destroyed",
        "Exception ignored",
        "Exception in thread",
        "Traceback",
        "Fatal Python error",
        "ResourceWarning",
        "Event loop is closed",
    ):
        assert noise not in stderr, f"stderr of the exiting child:\n{stderr}"
    if mode == "healthy":
        # Exiting without close() still delivers what was queued.
        stored = Stored.read(stream.url, stream.name)
        expected = chaos_child.EMITTED_BEFORE_READY + chaos_child.QUEUED_AT_EXIT
        assert sum(stored.counts.values()) == expected


def _pump_lines(pipe: Optional[IO[bytes]], into: queue.Queue[bytes]) -> None:
    assert pipe is not None
    for line in iter(pipe.readline, b""):
        into.put(line)


def _drain(lines: queue.Queue[bytes]) -> list[bytes]:
    drained: list[bytes] = []
    while not lines.empty():
        drained.append(lines.get_nowait())
    return drained


# -- 5. fork ----------------------------------------------------------------------------


def _child_after_fork(sink: JetStreamEventSink, prefix: str, count: int, write_fd: int) -> None:
    """Runs in the forked child; never returns (os._exit)."""
    report: dict[str, Any] = {"acked": [], "errors": []}
    status = 0
    try:
        report["threads_at_fork"] = [t.name for t in sink_threads()]
        for n in range(count):
            event_id = f"{prefix}-{n}"
            try:
                sink.emit(make_event(event_id))
                report["acked"].append(event_id)
            except SinkError as exc:
                report["errors"].append(f"{event_id}: {type(exc).__name__}: {exc}")
        report["threads_after_emit"] = [t.name for t in sink_threads() if t.is_alive()]
        sink.close(timeout=5)
        report["threads_after_close"] = [t.name for t in sink_threads()]
    except BaseException:
        report["crash"] = traceback.format_exc()
        status = 1
    finally:
        os.write(write_fd, json.dumps(report).encode())
        os.close(write_fd)
        os._exit(status)


def test_a_forked_child_gets_its_own_thread_and_connection(stream: StagedStream) -> None:
    name = "chaos-fork"
    child_events = 50
    children = 3
    with JetStreamEventSink.connect(
        stream.url, stream.subject("fork"), publish_timeout=PUBLISH_TIMEOUT, name=name
    ) as sink:
        sink.emit(make_event("parent-first"))
        parent_cid = connections_named(stream.server, name)[0]["cid"]
        # The parent keeps emitting from another thread while it forks, so locks may be
        # held at fork time.
        stop = threading.Event()
        parent_outcomes = Outcomes()

        def parent_producer() -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                emit_and_record(sink, make_event(f"parent-{n}"), parent_outcomes, with_ack=True)

        producer = threading.Thread(target=parent_producer, name="chaos-fork-parent")
        producer.start()
        reports: list[dict[str, Any]] = []
        try:
            for number in range(children):
                wait_until(lambda: len(parent_outcomes.acked) > 10 * (number + 1), 10, "parent")
                read_fd, write_fd = os.pipe()
                with warnings.catch_warnings():
                    # 3.12+: "use of fork() may lead to deadlocks in the child" is the point.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    os.close(read_fd)
                    _child_after_fork(sink, f"child{number}", child_events, write_fd)
                os.close(write_fd)
                reports.append(_wait_for_child(pid, read_fd, timeout=30))
        finally:
            stop.set()
            producer.join(30)
        assert not producer.is_alive(), "the parent's producer hung"
        sink.emit(make_event("parent-last"))
        assert connections_named(stream.server, name)[0]["cid"] == parent_cid
    closed = connections_named(stream.server, name, state="closed")
    for number, report in enumerate(reports):
        assert "crash" not in report, report["crash"]
        assert report["errors"] == []
        assert report["threads_at_fork"] == [], "a forked child has no sink thread of its own"
        assert len(report["threads_after_emit"]) == 1, report
        assert report["threads_after_close"] == []
        assert report["acked"] == [f"child{number}-{n}" for n in range(child_events)]
    # Each child had its own connection (closed now), besides the parent's one.
    child_connections = [c for c in closed if c["cid"] != parent_cid]
    assert len(child_connections) == children
    # What each child sent: its events, plus connect()'s one JetStream API request.
    assert sorted(c["in_msgs"] for c in child_connections) == [child_events + 1] * children
    stored = Stored.read(stream.url, stream.name)
    parent_outcomes.acked.update({"parent-first": 0, "parent-last": 0})
    expected = set(parent_outcomes.acked) | {
        f"child{number}-{n}" for number in range(children) for n in range(child_events)
    }
    assert parent_outcomes.not_acked() == []
    assert not parent_outcomes.other
    assert dict(stored.counts) == dict.fromkeys(expected, 1)


def _wait_for_child(pid: int, read_fd: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            raise AssertionError(f"the forked child hung for {timeout}s")
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    assert os.WIFEXITED(status), f"child ended by signal {os.WTERMSIG(status)}"
    report: dict[str, Any] = json.loads(data)
    assert os.WEXITSTATUS(status) == 0, report.get("crash")
    return report


def test_a_child_forked_while_the_parents_probe_hangs_can_publish_at_once(
    stream: StagedStream,
) -> None:
    """The child's first ``emit()`` works on its own connection, whatever the parent's
    breaker was doing at fork time; here a probe was in flight, never to finish in the child.
    """
    publish_timeout = 1.5
    with JetStreamEventSink.connect(
        stream.url, stream.subject("fork"), publish_timeout=publish_timeout
    ) as sink:
        sink.emit(make_event("parent-before"))
        parent_errors: list[list[BaseException]] = [[], []]
        ended: list[float] = []
        with frozen(stream.server):
            # An emit times out against the hung server and opens the circuit ...
            opener = threading.Thread(
                target=_emit_expecting_error, args=(sink, "parent-opens", parent_errors[0], ended)
            )
            opener.start()
            wait_until(lambda: isinstance(sink.debug_state(), Reconnecting), 10, "no opening")

            def probe_due() -> bool:
                state = sink.debug_state()
                return isinstance(state, Reconnecting) and time.monotonic() >= state.next_after

            wait_until(probe_due, 5, "no probe came due")
            # ... and the next one is the probe, which hangs as well.
            prober = threading.Thread(
                target=_emit_expecting_error, args=(sink, "parent-probe", parent_errors[1], ended)
            )
            prober.start()
            wait_until(lambda: sink.stats().probes == 1, 5, "the probe never started")
            read_fd, write_fd = os.pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child_emits_until_acked(sink, "orphan", 5.0, write_fd)
            os.close(write_fd)
        report = _wait_for_child(pid, read_fd, timeout=30)
        opener.join(10)
        prober.join(10)
    print(f"\nchild forked during a probe: {report}")
    assert "crash" not in report, report["crash"]
    later = f"after {report['attempts']} attempts" if report["acked"] else "never, in 5s"
    assert report["first"] == "acked", (
        f"the child's first emit failed ({report['first']}); an ack came {later}"
    )


def _child_emits_until_acked(
    sink: JetStreamEventSink, prefix: str, patience: float, write_fd: int
) -> None:
    """Runs in the forked child: emit until one event is acked or ``patience`` runs out."""
    report: dict[str, Any] = {"first": None, "acked": False, "attempts": 0}
    status = 0
    try:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and not report["acked"]:
            report["attempts"] += 1
            try:
                sink.emit(make_event(f"{prefix}-{report['attempts']}"))
                outcome = "acked"
                report["acked"] = True
            except SinkError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
            if report["first"] is None:
                report["first"] = outcome
        sink.close(timeout=5)
    except BaseException:
        report["crash"] = traceback.format_exc()
        status = 1
    finally:
        os.write(write_fd, json.dumps(report).encode())
        os.close(write_fd)
        os._exit(status)


# -- 6. secrets across restarts ----------------------------------------------------------

#: Credentials the servers of the secrets test require; letters the URL carries unquoted.
SECRET_PASSWORD = "pw-Zq9.s3cr3t~42"
SECRET_TOKEN = "tok-Xy7.s3cr3t~99"


class RecordEverything(logging.Handler):
    """Keeps the full text of every record: message, raw args, traceback, stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.loggers: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.name, str(record.msg), repr(record.args)]
        with contextlib.suppress(Exception):
            parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.stack_info:
            parts.append(record.stack_info)
        self.texts.append("\n".join(parts))
        self.loggers[record.name] += 1


@contextlib.contextmanager
def every_log_record() -> Iterator[RecordEverything]:
    """Capture every record of every logger at DEBUG, nats-py's and asyncio's included.

    The handler sits on the root logger, and also on any logger that does not propagate.
    """
    handler = RecordEverything()
    for name in ("nats", "nats.aio.client", "nats.js", "asyncio", "cellos_sink_jetstream"):
        logging.getLogger(name)  # make sure they exist, so their level is set below
    root = logging.getLogger()
    loggers = [root] + [
        logger for logger in root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    levels = [logger.level for logger in loggers]
    hooked = [root] + [logger for logger in loggers[1:] if not logger.propagate]
    for logger in hooked:
        logger.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger in hooked:
            logger.removeHandler(handler)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def error_texts(exc: BaseException) -> list[str]:
    """The formatted traceback of ``exc``, and ``str``/``repr`` of it and of every exception
    chained to it (``__cause__`` and ``__context__``, shown or not: tools walk both)."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    chained: Optional[BaseException] = exc
    for _ in range(20):
        if chained is None:
            break
        texts += [str(chained), repr(chained)]
        chained = chained.__cause__ or chained.__context__
    return texts


def emit_until(
    sink: JetStreamEventSink,
    prefix: str,
    done: Callable[[Optional[BaseException]], bool],
    raised: list[BaseException],
    timeout: float,
) -> None:
    """Emit events until ``done(error or None)``; collect every error raised."""
    deadline = time.monotonic() + timeout
    for n in itertools.count():
        error: Optional[BaseException] = None
        try:
            sink.emit(make_event(f"{prefix}-{n}"))
        except SinkError as exc:
            error = exc
            raised.append(exc)
        if done(error):
            return
        assert time.monotonic() < deadline, f"{prefix}: gave up after {timeout:g}s ({error!r})"
        time.sleep(0.01)


@pytest.mark.chaos
@pytest.mark.parametrize("form", ["user-password", "token"])
def test_credentials_never_show_in_logs_errors_or_repr_across_restarts(
    nats_server_factory: ServerFactory, form: str
) -> None:
    if form == "token":
        secret = SECRET_TOKEN
        server = nats_server_factory(token=secret)
    else:
        secret = SECRET_PASSWORD
        server = nats_server_factory(user="chaos-user", password=secret)
    assert secret in server.url
    stage_stream(server.url, "CELLOS", ["cellos.events.>"], duplicate_window=DUPLICATE_WINDOW)
    texts: list[str] = []
    raised: list[BaseException] = []
    with every_log_record() as logs:
        sink = JetStreamEventSink.connect(
            server.url, TENANT_SUBJECT, stream="CELLOS", publish_timeout=1.0, connect_timeout=2.0
        )
        try:
            for restart in range(5):
                emit_until(sink, f"up{restart}", lambda e: e is None, raised, 15)
                texts += [repr(sink), str(sink), repr(sink.stats()), repr(sink.debug_state())]
                if restart % 2:
                    server.stop()
                else:
                    server.kill()
                emit_until(
                    sink,
                    f"down{restart}",
                    lambda e: isinstance(e, CircuitOpenError),
                    raised,
                    15,
                )
                texts += [repr(sink), str(sink), repr(sink.debug_state())]
                with pytest.raises(ConnectError) as refused:
                    JetStreamEventSink.connect(server.url, TENANT_SUBJECT, connect_timeout=0.5)
                raised.append(refused.value)
                server.start()
            emit_until(sink, "last", lambda e: e is None, raised, 15)
        finally:
            sink.close()
        texts += [repr(sink), str(sink)]
    for exc in raised:
        texts += error_texts(exc)
    texts += logs.texts
    kinds = Counter(type(exc).__name__ for exc in raised)
    print(f"\n[{form}] {len(logs.texts)} log records {dict(logs.loggers)}; errors {dict(kinds)}")
    assert kinds["ConnectError"] == 5
    assert kinds["CircuitOpenError"] >= 5
    assert logs.loggers["cellos_sink_jetstream"] > 0
    leaks = [text for text in texts if secret in text]
    assert not leaks, f"{len(leaks)} texts show the secret, e.g.:\n{leaks[0]}"


# -- 7. a long outage --------------------------------------------------------------------


class OutageProducer:
    """Emits continuously until stopped, keeping counters only (nothing per failure)."""

    #: Most latency samples kept per sampling window.
    MAX_SAMPLES = 50_000

    def __init__(self, sink: JetStreamEventSink, number: int, stop: threading.Event) -> None:
        self.sink = sink
        self.number = number
        self.stop = stop
        self.acked: list[str] = []
        self.fast_failed = 0
        self.failed = 0
        self.other: list[str] = []
        #: Set to a list to sample fast-fail latencies into it, None to stop sampling.
        self.samples: Optional[list[float]] = None
        self.crash: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=f"chaos-outage-{number}")

    def _run(self) -> None:
        try:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                event = make_event(f"long-{self.number}-{n}")
                started = time.perf_counter()
                try:
                    self.sink.emit(event)
                except CircuitOpenError:
                    took = time.perf_counter() - started
                    self.fast_failed += 1
                    samples = self.samples
                    if samples is not None and len(samples) < self.MAX_SAMPLES:
                        samples.append(took)
                    continue
                except PublishError:
                    self.failed += 1
                    continue
                except SinkError as exc:
                    if len(self.other) < 10:
                        self.other.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.acked.append(event.id)
        except BaseException as exc:
            self.crash = exc


def sample_latencies(producers: Sequence[OutageProducer], seconds: float) -> list[float]:
    """Collect the fast-fail latencies of every producer for ``seconds``."""
    windows: list[list[float]] = [[] for _ in producers]
    for producer, window in zip(producers, windows):
        producer.samples = window
    time.sleep(seconds)  # the length of the measurement window, not a synchronisation
    for producer in producers:
        producer.samples = None
    return [sample for window in windows for sample in window]


def traced_snapshot() -> tracemalloc.Snapshot:
    """What is allocated right now, after a collection, minus log capture and tracing.

    pytest keeps every log record of the test (the client logs each reconnect attempt at
    DEBUG); that grows with time, not with failures, and is not the sink's memory.
    """
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, logging.__file__),
            tracemalloc.Filter(False, "*/_pytest/*"),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )


@pytest.mark.chaos
def test_a_long_outage_keeps_memory_flat_and_fast_failures_fast(stream: StagedStream) -> None:
    """Four threads emit without pause through an outage of at least 60 s.

    Timeline after the kill: latencies sampled in [1 s, 4 s]; memory traced from 5 s,
    compared between 10 s and 50 s; latencies sampled again at 50 s; the restart comes
    after 60 s, timed 1-2.5 s before a probe is due (about 100 s in: probes run at 51.1 s
    and 102.3 s), so recovery does not wait out a whole backoff. A leak of one pointer per
    failure would show as 8 bytes per failure.
    """
    stop = threading.Event()
    with JetStreamEventSink.connect(
        stream.url, TENANT_SUBJECT, stream=stream.name, publish_timeout=PUBLISH_TIMEOUT
    ) as sink:
        producers = [OutageProducer(sink, k, stop) for k in range(4)]
        for producer in producers:
            producer.thread.start()
        try:
            acked = lambda: sum(len(p.acked) for p in producers)  # noqa: E731
            fast_failed = lambda: sum(p.fast_failed for p in producers)  # noqa: E731
            wait_until(lambda: acked() >= 400, 30, "no events flowed before the outage")
            stream.server.kill()
            killed = time.monotonic()
            wait_until(lambda: sink.debug_state() != Connected(), 10, "the circuit never opened")
            since_kill = lambda: time.monotonic() - killed  # noqa: E731

            wait_until(lambda: since_kill() >= 1.0, 5, "")
            early = sample_latencies(producers, 3.0)
            wait_until(lambda: since_kill() >= 5.0, 5, "")
            tracemalloc.start()
            try:
                wait_until(lambda: since_kill() >= 10.0, 10, "")
                at_10s, failures_at_10s = traced_snapshot(), fast_failed()
                wait_until(lambda: since_kill() >= 50.0, 45, "")
                at_50s, failures_at_50s = traced_snapshot(), fast_failed()
            finally:
                tracemalloc.stop()

            def probe_due_soon() -> bool:
                state = sink.debug_state()
                assert isinstance(state, Reconnecting), "the circuit closed without a server"
                return 1.0 <= state.next_after - time.monotonic() <= 2.5

            late = sample_latencies(producers, 0.5)
            wait_until(lambda: since_kill() >= 60.0 and probe_due_soon(), 70, "no probe came due")
            outage = since_kill()
            acked_before = acked()
            state = sink.debug_state()
            assert isinstance(state, Reconnecting)
            stream.server.start()
            wait_until(
                lambda: acked() > acked_before and sink.debug_state() == Connected(),
                state.next_after - time.monotonic() + RECOVERY_SLACK,
                "events did not flow again after the restart",
            )
            wait_until(lambda: acked() >= acked_before + 400, 30, "events stopped again")
        finally:
            stop.set()
            for producer in producers:
                producer.thread.join(30)
    for producer in producers:
        assert producer.crash is None, repr(producer.crash)
        assert producer.other == []
    assert early, "no fast failure was sampled early in the outage"
    assert late, "no fast failure was sampled late in the outage"
    failures = failures_at_50s - failures_at_10s
    growth = sum(stat.size_diff for stat in at_50s.compare_to(at_10s, "filename"))
    growers = "\n".join(str(stat) for stat in at_50s.compare_to(at_10s, "lineno")[:8])
    print(
        f"\noutage {outage:.1f}s (attempt {state.attempt}): {fast_failed()} fast failures; "
        f"between 10s and 50s {failures} failures, traced memory grew {growth} bytes "
        f"({growth / max(failures, 1):.4f} bytes per failure); "
        f"fast-fail median {statistics.median(early) * 1e6:.1f}us early, "
        f"{statistics.median(late) * 1e6:.1f}us late (p99 "
        f"{sorted(late)[int(len(late) * 0.99)] * 1e6:.0f}us)"
    )
    assert failures >= 20_000, "too few failures in the window for the memory check to mean much"
    allowed = max(64 * 1024, 3 * failures)
    assert growth < allowed, f"{growth} bytes more after {failures} failures:\n{growers}"
    assert statistics.median(early) < 0.0005
    assert statistics.median(late) < 0.0005
    stored = Stored.read(stream.url, stream.name)
    assert all(n == 1 for n in stored.counts.values())
    acked_ids = [event_id for p in producers for event_id in p.acked]
    assert all(stored.counts[event_id] == 1 for event_id in acked_ids)


@pytest.mark.chaos
def test_a_successful_probe_has_closed_the_circuit_when_its_emit_returns(
    nats_server_factory: ServerFactory,
) -> None:
    """README: "probe acknowledged -> Connected". Found by the long-outage test.

    A caller whose emit was the successful probe must not find the circuit still open when
    ``emit()`` returns (then its next emit, or anyone's, fails fast with "NATS JetStream is
    unreachable" right after NATS acknowledged). The circuit is opened over and over with an
    event for a tenant no stream captures (README: ``NoStreamError`` opens the circuit),
    while four threads emit good events; whichever is the probe checks the state as soon as
    its emit returned.
    """
    server = nats_server_factory()
    stage_stream(server.url, "CELLOS", ["cellos.good.events"])
    stop = threading.Event()
    probes: list[str] = []
    lagging: list[str] = []
    crashes: list[BaseException] = []

    def tenant_event(event_id: str, tenant: str) -> CloudEventV1:
        return CloudEventV1(
            id=event_id, source="/chaos", type="cell.chaos", extensions={"tenantid": tenant}
        )

    with JetStreamEventSink.connect(
        server.url, "cellos.{tenantId}.events", publish_timeout=PUBLISH_TIMEOUT
    ) as sink:

        def emitter(number: int) -> None:
            try:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    before = sink.debug_state()
                    try:
                        sink.emit(tenant_event(f"good-{number}-{n}", "good"))
                    except SinkError:
                        continue
                    if before == Connected():
                        continue
                    # Acknowledged although the circuit was open when it started: the probe.
                    after = sink.debug_state()
                    probes.append(f"good-{number}-{n}")
                    if after == before:
                        lagging.append(f"good-{number}-{n}: still {after}")
            except BaseException as exc:
                crashes.append(exc)

        threads = [threading.Thread(target=emitter, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        try:
            for cycle in itertools.count():
                if len(probes) >= 60:
                    break
                assert time.monotonic() < deadline, f"only {len(probes)} probes in 30s"
                wait_until(lambda: sink.debug_state() == Connected(), 5, "circuit stays open")
                with pytest.raises(NoStreamError):
                    sink.emit(tenant_event(f"bad-{cycle}", "bad"))
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert crashes == []
    print(f"\n{len(probes)} successful probes, {len(lagging)} returned before the circuit closed")
    assert lagging == [], (
        f"{len(lagging)} of {len(probes)} successful probes returned to their caller while "
        f"the circuit was still open, e.g. {lagging[:3]}"
    )


# -- 8. hostile input against the real server --------------------------------------------

#: The hostile-input server's max_payload.
HOSTILE_MAX_PAYLOAD = 64 * 1024
#: Client name of the sink under attack, to find its connection in /connz.
HOSTILE_SINK = "chaos-hostile"
#: Subjects a valid event of :func:`make_event` may go to.
TENANT_SUBJECTS = frozenset(f"cellos.events.tenant{k}" for k in range(3))
#: What a valid tenant id looks like (the README's rule); used to keep generated ids bad.
VALID_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

TapMessage = tuple[str, Optional[dict[str, str]]]


class WireTap:
    """A plain NATS subscriber on ``>``: records the subject and headers of every message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[TapMessage] = []
        self._ready = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Future[None]] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="chaos-wiretap")

    def __enter__(self) -> WireTap:
        self._thread.start()
        assert self._ready.wait(10), "the wire tap did not subscribe in time"
        assert self._error is None, repr(self._error)
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set_result, None)
        self._thread.join(10)
        assert not self._thread.is_alive()

    def on(self, prefix: str) -> list[TapMessage]:
        return [m for m in list(self.messages) if m[0].startswith(prefix)]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        nc = await connect(self.url)
        try:

            async def record(msg: Msg) -> None:
                self.messages.append((msg.subject, msg.headers))

            await nc.subscribe(">", cb=record)
            await nc.flush()
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            self._ready.set()
            await self._stop
        finally:
            await nc.close()


@dataclass(frozen=True)
class Hostile:
    """One hostile emit: what ``emit()`` gets, and which error(s) it must raise."""

    what: str
    event: Any = field(repr=False)
    errors: tuple[type[BaseException], ...]
    #: ``InvalidEventError.attribute`` the error must name, when known.
    attribute: Optional[str] = None


def _base(**members: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "hostile", "source": "/hostile", "type": "t", **members}


_BAD_TENANT_PIECES = [
    ".", "*", ">", "$", " ", "\t", "\r", "\n", "\r\n", "\x00", "\x7f", "é", "租户", "\u2028",
    "/", "{tenantId}", "\r\nPUB cellos.events.evil 4\r\nevil",
]  # fmt: skip

#: Tenant ids the issue names; each is tried in every place a tenant id can come from.
REQUIRED_TENANTS = [
    "", ".", "a.b", "*", "a.*", ">", "a.>", "$SYS", "$JS.API.STREAM.DELETE.CELLOS", " ", "a b",
    "a\tb", "\r\n", "a\r\nb", "\x00", "a\x00b", "tenänt", "租户", "x" * 10_240,
]  # fmt: skip
TENANT_PLACES = ["extension", "correlation", "spec"]

hostile_tenants = st.one_of(
    st.sampled_from([*REQUIRED_TENANTS, "_default", "-a", "a" * 65]),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text(alphabet="abc123_-", max_size=10),
        st.sampled_from(_BAD_TENANT_PIECES),
        st.text(max_size=10),
    ),
    st.text(max_size=80).filter(lambda text: VALID_TENANT.fullmatch(text) is None),
)


def _tenant_case(tenant: str, where: str) -> Hostile:
    if where == "extension":
        # Control characters are refused as a bad extension value, the rest as a bad tenant.
        return Hostile(
            f"tenant in {where}", _base(tenantid=tenant), (InvalidSubjectError, InvalidEventError)
        )
    data = {"correlation": {"tenantId": tenant}}
    if where == "spec":
        data = {"spec": data}
    return Hostile(f"tenant in {where}", _base(data=data), (InvalidSubjectError,))


_NEWLINES = ["\r\n", "\r", "\n", "\r\nPUB cellos.events.evil 4\r\nevil\r\n", "\r\nNats-Msg-Id: x"]
_ATTRIBUTES = ["id", "source", "type", "subject", "datacontenttype", "dataschema", "time"]


def _attribute_case(attribute: str, value: str) -> Hostile:
    return Hostile(
        f"CR/LF in {attribute}", _base(**{attribute: value}), (InvalidEventError,), attribute
    )


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


#: Data that is not JSON: (label, factory of a fresh value).
_BAD_DATA: list[tuple[str, Callable[[], Any]]] = [
    ("set", lambda: {1, 2}),
    ("frozenset", lambda: frozenset({"a"})),
    ("NaN", lambda: float("nan")),
    ("infinity", lambda: float("inf")),
    ("nested -infinity", lambda: {"deep": {"deeper": [float("-inf")]}}),
    ("nested bytes", lambda: {"nested": {"blob": b"\x00\x01"}}),
    ("bytes in a list", lambda: [b"raw"]),
    ("object", lambda: {"object": object()}),
    ("datetime", lambda: {"when": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)}),
    ("Decimal", lambda: {"price": decimal.Decimal("1.5")}),
    ("complex", lambda: complex(1, 2)),
    ("set in a list", lambda: {"set": [1, {2, 3}]}),
    ("circular list", _circular),
]
#: Refused at construction only: after a mutation, json writes the key as "1" (valid JSON).
_BAD_DATA_MAPPING_ONLY: list[tuple[str, Callable[[], Any]]] = [("int key", lambda: {1: "x"})]


def _data_case(bad: tuple[str, Callable[[], Any]], form: str) -> Hostile:
    label, make_bad = bad
    if form == "mapping":
        return Hostile(f"data: {label}", _base(data=make_bad()), (InvalidEventError,), "data")
    # A valid event whose data the caller broke after construction.
    event = CloudEventV1(id="hostile", source="/hostile", type="t", data={"ok": True})
    event.data["broken"] = make_bad()
    return Hostile(f"data mutated: {label}", event, (InvalidEventError,), "data")


def _oversize_case(char: str, extra: int) -> Hostile:
    data = char * (HOSTILE_MAX_PAYLOAD // len(char.encode()) + extra)
    return Hostile(f"over max_payload, {char!a}", _base(data=data), (PayloadTooLargeError,))


#: Generated cases, one strategy per kind so that each kind gets its own examples.
hostile_strategies = {
    "tenant": st.builds(_tenant_case, hostile_tenants, st.sampled_from(TENANT_PLACES)),
    "attribute": st.builds(
        _attribute_case,
        st.sampled_from([*_ATTRIBUTES, "traceparent"]),
        st.builds(
            lambda head, newline, tail: head + newline + tail,
            st.text(alphabet="abcXYZ019-/:", min_size=1, max_size=12),
            st.sampled_from(_NEWLINES),
            st.text(alphabet="abcXYZ019-/:", max_size=12),
        ),
    ),
    "data": st.one_of(
        st.builds(_data_case, st.sampled_from(_BAD_DATA), st.sampled_from(["mapping", "mutated"])),
        st.builds(_data_case, st.sampled_from(_BAD_DATA_MAPPING_ONLY), st.just("mapping")),
    ),
    "oversize": st.builds(
        _oversize_case, st.sampled_from(["x", "é", "租", "😀"]), st.integers(1, 5000)
    ),
}


def fuzz(strategy: st.SearchStrategy[Hostile], attack: Callable[[Hostile], None]) -> None:
    """Run ``attack`` on 50 examples of ``strategy``."""

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=strategy)
    def run(case: Hostile) -> None:
        attack(case)

    run()


def _connection(server: NatsServer, name: str) -> dict[str, Any]:
    found = connections_named(server, name)
    assert len(found) == 1, f"expected one connection named {name}, got {found}"
    return found[0]


def test_hostile_input_gets_its_typed_error_and_never_reaches_the_wire(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(max_payload=HOSTILE_MAX_PAYLOAD)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"], duplicate_window=DUPLICATE_WINDOW)
    transitions = Transitions()
    canaries = itertools.count()
    tried: Counter[str] = Counter()
    with WireTap(server.url) as tap:
        sink = JetStreamEventSink.connect(
            server.url,
            TENANT_SUBJECT,
            stream="CELLOS",
            name=HOSTILE_SINK,
            on_transition=transitions,
        )
        with sink:
            sink.emit(make_event(f"canary-{next(canaries)}"))
            cid = _connection(server, HOSTILE_SINK)["cid"]

            def attack(case: Hostile) -> None:
                tried[case.what] += 1
                before = _connection(server, HOSTILE_SINK)
                with pytest.raises(case.errors) as raised:
                    sink.emit(case.event)
                assert not isinstance(raised.value, PublishError)
                if case.attribute is not None:
                    assert isinstance(raised.value, InvalidEventError)
                    assert raised.value.attribute == case.attribute
                assert sink.debug_state() == Connected()
                # The connection still works, and the server received only the canary.
                sink.emit(make_event(f"canary-{next(canaries)}"))
                expected = before["in_msgs"] + 1
                wait_until(
                    lambda: _connection(server, HOSTILE_SINK)["in_msgs"] >= expected, 5, "stats"
                )
                after = _connection(server, HOSTILE_SINK)
                assert after["cid"] == cid, "the server dropped the connection"
                assert after["in_msgs"] == expected, (
                    f"{case.what}: hostile bytes reached the server"
                )

            for tenant in REQUIRED_TENANTS:
                for place in TENANT_PLACES:
                    attack(_tenant_case(tenant, place))
            for attribute in [*_ATTRIBUTES, "traceparent"]:
                for newline in _NEWLINES:
                    attack(_attribute_case(attribute, f"a{newline}b"))
            for bad in _BAD_DATA:
                for form in ("mapping", "mutated"):
                    attack(_data_case(bad, form))
            for bad in _BAD_DATA_MAPPING_ONLY:
                attack(_data_case(bad, "mapping"))
            attack(_oversize_case("x", 1))
            for strategy in hostile_strategies.values():
                fuzz(strategy, attack)

            sent = next(canaries)
            wait_until(lambda: len(tap.on("cellos.")) >= sent, 10, "the tap missed canaries")
            stats = sink.stats()
    print(f"\nhostile cases tried: {dict(tried)}")
    assert transitions.snapshot() == [], "the breaker moved"
    assert stats.breaker_openings == 0
    assert stats.failed == 0
    assert stats.published == sent
    drops = [r.getMessage() for r in caplog.records if "connected" in r.getMessage()]
    assert drops == [], "the connection dropped and reconnected"
    # connect()'s JetStream check asks for the expected stream's info once (the server
    # announces that API call as an advisory); nothing else but the canaries goes out.
    connect_check = ["$JS.API.STREAM.INFO.CELLOS", "$JS.EVENT.ADVISORY.API"]
    unintended = [
        subject
        for subject, _ in tap.messages
        if subject not in TENANT_SUBJECTS and not subject.startswith("_INBOX.")
    ]
    assert sorted(unintended) == sorted(connect_check)
    stored = Stored.read(server.url, "CELLOS")
    assert dict(stored.counts) == {f"canary-{n}": 1 for n in range(sent)}


def test_events_at_the_max_payload_boundary_are_acked_or_refused_never_dropped(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Headers count against max_payload in UTF-8 bytes: exactly at the limit is acked,
    one byte over is refused before sending, and the server never cuts the connection."""
    limit = 4096
    server = nats_server_factory(max_payload=limit)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"])
    name = "chaos-boundary"
    with (
        WireTap(server.url) as tap,
        JetStreamEventSink.connect(
            server.url, "cellos.events.boundary", stream="CELLOS", name=name
        ) as sink,
    ):
        canary_id = "boundary-canary"
        sink.emit(CloudEventV1(id=canary_id, source="/boundary", type="t"))
        wait_until(lambda: tap.on("cellos."), 10, "the tap saw no message")
        ((_, headers),) = tap.on("cellos.")
        assert headers is not None
        header_block = (
            len(b"NATS/1.0\r\n")
            + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())
            + 2
        )
        # The header block without the id, whose length varies per event.
        fixed = header_block - len(canary_id.encode())
        cid = _connection(server, name)["cid"]
        acked: list[str] = []
        for stem in ["ascii", "é" * 100, "租" * 60, "😀" * 40]:
            for over in (0, 1):
                event_id = f"boundary-{stem}-{over}"
                empty = CloudEventV1(id=event_id, source="/boundary", type="t", data="")
                room = limit + over - fixed - len(event_id.encode()) - len(empty.to_json())
                event = CloudEventV1(id=event_id, source="/boundary", type="t", data="x" * room)
                size = fixed + len(event_id.encode()) + len(event.to_json())
                assert size == limit + over
                if over:
                    with pytest.raises(PayloadTooLargeError) as raised:
                        sink.publish(event)
                    assert raised.value.limit == limit
                    assert raised.value.size == size
                else:
                    assert sink.publish(event).seq == len(acked) + 2
                    acked.append(event_id)
                assert sink.debug_state() == Connected()
                assert _connection(server, name)["cid"] == cid, f"{event_id}: connection dropped"
    assert sink.stats().breaker_openings == 0
    assert [r.getMessage() for r in caplog.records if "connected" in r.getMessage()] == []
    stored = Stored.read(server.url, "CELLOS")
    assert dict(stored.counts) == dict.fromkeys([canary_id, *acked], 1)
