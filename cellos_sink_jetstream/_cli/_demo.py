"""``demo``: emit lifecycle events from several threads, read them back, report.

With ``--chaos`` it restarts the embedded nats-server mid-run. The workload, the stream
and the verdict on what was stored are in ``_demo_events``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Optional

from .._breaker import BreakerState, Connected
from .._config import ENV_NATS_URL
from .._errors import CircuitOpenError, PublishError
from .._event import CloudEventV1
from .._retry import with_retry
from .._seam import PubAck
from .._server import NatsServer
from .._sink import JetStreamEventSink
from .._sink_protocol import SinkStats
from ._demo_events import (
    DEMO_SUBJECT_TEMPLATE,
    DEMO_TENANTS,
    DemoStream,
    DemoVerdict,
    build_demo_workload,
    prepare_demo_stream,
    read_demo_events,
    verify_demo,
)
from ._exit_status import EXIT_OK, EXIT_UNREACHABLE, CliError
from ._output import PROG, out, plural
from ._streams import capture_pattern
from ._target import Target, connect_sink, embedded_target, option, target_from_args, with_nats


@contextlib.contextmanager
def _quiet_library_log(verbosity: int) -> Iterator[None]:
    """The demo prints breaker transitions itself; keep the sink's own warnings out."""
    library = logging.getLogger("cellos_sink_jetstream")
    previous = library.level
    if verbosity == 0:
        library.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library.setLevel(previous)


def cmd_demo(args: argparse.Namespace) -> int:
    embedded = option(args, "url") is None and not os.environ.get(ENV_NATS_URL, "").strip()
    if args.chaos and not embedded:
        raise CliError(
            f"--chaos restarts the server, so it needs the embedded one: drop --url and "
            f"unset {ENV_NATS_URL}",
            EXIT_UNREACHABLE,
        )
    timeline = Timeline()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_library_log(option(args, "verbose", 0)))
        server: Optional[NatsServer] = None
        if embedded:
            server = stack.enter_context(NatsServer(host="127.0.0.1"))
            target = embedded_target(server)
            where = f"embedded nats-server at {target.display_url} (temporary store)"
        else:
            target = target_from_args(args)
            where = target.display_url
        stream = with_nats(target, lambda c: prepare_demo_stream(c, args.stage or embedded))
        lanes = build_demo_workload(args.events, args.threads, demo_id=uuid.uuid4().hex[:8])
        timeline.say(
            f"demo: {args.events} cell lifecycle events for tenants {', '.join(DEMO_TENANTS)} "
            f"from {args.threads} threads -> {DEMO_SUBJECT_TEMPLATE} on {where}, stream "
            f"{stream.name}"
        )
        chaos = None
        if args.chaos and server is not None:
            chaos = ServerRestart(server, max(1, args.events // 3), timeline)
        status = _run_demo(target, stream, lanes, timeline, chaos)
    if not embedded:
        pattern = capture_pattern(DEMO_SUBJECT_TEMPLATE)
        out(f"look at them: {PROG} tail --subject '{pattern}' --last 5 --oneline")
    return status


def _run_demo(
    target: Target,
    stream: DemoStream,
    lanes: list[list[CloudEventV1]],
    timeline: Timeline,
    chaos: Optional[ServerRestart],
) -> int:
    counters = DemoCounters()
    with connect_sink(
        target,
        DEMO_SUBJECT_TEMPLATE,
        command="demo",
        stream=stream.name,
        publish_timeout=2.0,
        on_transition=transition_printer(timeline),
    ) as sink:
        started = time.monotonic()
        if chaos is not None:
            chaos.start()
        try:
            run_producers(sink, lanes, counters, chaos)
        finally:
            if chaos is not None:
                chaos.finish()
        run = DemoRun(counters, sink.state, sink.stats(), time.monotonic() - started, stream)
    stored = with_nats(target, lambda client: read_demo_events(client, stream))
    verdict = verify_demo(lanes, stored)
    print_demo_report(run, verdict)
    return demo_exit(counters, verdict, chaos)


#: How often a producer tries an event before giving up on it: with waits of at most
#: :data:`DEMO_MAX_WAIT_SECONDS`, about a minute.
DEMO_ATTEMPTS = 120
DEMO_MAX_WAIT_SECONDS = 0.5


@dataclass
class DemoCounters:
    """What the producer threads saw (updated under :attr:`lock`)."""

    acked: int = 0
    fast_fails: int = 0
    retried: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _publish_until_acked(
    sink: JetStreamEventSink, event: CloudEventV1, counters: DemoCounters
) -> Optional[PubAck]:
    """Publish ``event`` (same id every time) until JetStream acknowledges it, or give up."""

    def attempt() -> PubAck:
        try:
            return sink.publish(event)
        except CircuitOpenError:
            with counters.lock:
                counters.fast_fails += 1
            raise
        except PublishError:
            with counters.lock:
                counters.retried += 1
            raise

    try:
        return with_retry(
            DEMO_ATTEMPTS, attempt, retry_on=(PublishError,), max_delay=DEMO_MAX_WAIT_SECONDS
        )
    except PublishError:
        return None


def _produce_lane(
    sink: JetStreamEventSink,
    lane: list[CloudEventV1],
    counters: DemoCounters,
    chaos: Optional[ServerRestart],
) -> None:
    try:
        for event in lane:
            if chaos is not None:
                chaos.hold()
            ack = _publish_until_acked(sink, event, counters)
            with counters.lock:
                if ack is None:
                    counters.lost += 1
                    continue
                counters.acked += 1
                acked = counters.acked
            if chaos is not None:
                chaos.note_acked(acked)
    except Exception as exc:  # reported in the summary rather than lost in a thread
        with counters.lock:
            counters.errors.append(f"{type(exc).__name__}: {exc}")


def run_producers(
    sink: JetStreamEventSink,
    lanes: list[list[CloudEventV1]],
    counters: DemoCounters,
    chaos: Optional[ServerRestart],
) -> None:
    threads = [
        threading.Thread(
            target=_produce_lane,
            args=(sink, lane, counters, chaos),
            name=f"cellos-demo-producer-{number}",
            daemon=True,
        )
        for number, lane in enumerate(lanes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


_DEMO_DOWNTIME_SECONDS = 0.8


class ServerRestart:
    """Restarts the embedded server once, after ``trigger_at`` events were acknowledged.

    Producers call :meth:`hold` before each event: once the restart is due they wait
    until the server is down, so the outage always lands in the middle of the run.
    """

    def __init__(self, server: NatsServer, trigger_at: int, timeline: Timeline) -> None:
        self._server = server
        self._trigger_at = trigger_at
        self._timeline = timeline
        self._due = threading.Event()
        self._down = threading.Event()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="cellos-demo-chaos", daemon=True)
        #: Why the restart failed, if it did.
        self.error: Optional[str] = None

    def start(self) -> None:
        """Start waiting for the trigger."""
        self._thread.start()

    def note_acked(self, acked: int) -> None:
        """Called with the running count of acknowledged events."""
        if acked >= self._trigger_at:
            self._due.set()

    def hold(self) -> None:
        """Block a producer while the server is being stopped."""
        if self._due.is_set():
            self._down.wait(30.0)

    def finish(self) -> None:
        """Wait for the restart to complete (or cancel it if it never became due)."""
        self._cancelled = True
        self._due.set()
        self._thread.join(60.0)

    def _run(self) -> None:
        self._due.wait()
        try:
            if self._cancelled:
                return
            self._timeline.say(
                f"chaos: stopping nats-server after {self._trigger_at} acknowledged events"
            )
            self._server.stop()
            self._down.set()
            time.sleep(_DEMO_DOWNTIME_SECONDS)
            self._timeline.say("chaos: starting nats-server again (same port and store)")
            self._server.start()
            self._timeline.say("chaos: nats-server is back; the next probe closes the breaker")
        except Exception as exc:
            self.error = f"restarting nats-server failed: {str(exc).splitlines()[0]}"
            self._timeline.say(f"chaos: {self.error}")
        finally:
            self._down.set()


class Timeline:
    """Prints demo lines to stdout, stamped with seconds since the demo started."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        """Print one stamped line (thread-safe)."""
        with self._lock:
            out(f"[{time.monotonic() - self._started:6.2f}s] {text}")


def transition_printer(timeline: Timeline) -> Callable[[BreakerState, BreakerState], None]:
    def on_transition(old: BreakerState, new: BreakerState) -> None:
        if isinstance(new, Connected):
            timeline.say("breaker CLOSED: a probe was acknowledged, events flow again")
        elif isinstance(old, Connected):
            timeline.say(
                f"breaker OPEN: a publish failed; emits now fail fast with CircuitOpenError "
                f"(first probe in {max(0.0, new.next_after - time.monotonic()):.2f}s)"
            )
        else:
            timeline.say(
                f"breaker still open: probe {new.attempt} failed, next probe in "
                f"{max(0.0, new.next_after - time.monotonic()):.2f}s"
            )

    return on_transition


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
