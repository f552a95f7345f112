"""``demo``: emit lifecycle events from several threads and read them back."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Optional

from .._config import ENV_NATS_URL
from .._event import CloudEventV1
from .._server import NatsServer
from ._demo_chaos import ServerRestart
from ._demo_producers import DemoCounters, run_producers
from ._demo_report import DemoRun, demo_exit, print_demo_report, verify_demo
from ._demo_stream import DemoStream, prepare_demo_stream, read_demo_events
from ._demo_timeline import Timeline, transition_printer
from ._demo_workload import DEMO_SUBJECT_TEMPLATE, DEMO_TENANTS, build_demo_workload
from ._exit_status import EXIT_UNREACHABLE, CliError
from ._output import PROG, out
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
        run = DemoRun(
            counters, sink.debug_state(), sink.stats(), time.monotonic() - started, stream
        )
    stored = with_nats(target, lambda client: read_demo_events(client, stream))
    verdict = verify_demo(lanes, stored)
    print_demo_report(run, verdict)
    return demo_exit(counters, verdict, chaos)
