"""A child process for ``tests/test_quiet_failures.py``: a sink meets a peer that never PONGs.

Run as ``python -m tests.quiet_child MODE URL [LOGGING]`` from the project root. With
LOGGING ``stdout`` (the default) log records go to stdout as ``RECORD LEVEL logger:
message`` (tracebacks included), so that stderr holds only what bypasses logging; with
``none`` logging is left unconfigured, as in a program that never set it up (Python then
prints warnings and errors on stderr). The sink is never closed.

- MODE ``connect``: ``connect()`` to a peer that hangs up instead of answering PING (it
  must raise ``ConnectError``), then wait for one line on stdin and exit.
- MODE ``reconnect``: connect to a real server and emit one event, print ``READY``, wait
  for one line on stdin (meanwhile the parent replaces the server with such a peer on the
  same port), then exit.
"""

from __future__ import annotations

import logging
import sys

from cellos_sink_jetstream import CloudEventV1, ConnectError, JetStreamEventSink


def main(argv: list[str]) -> int:
    mode, url, *rest = argv
    if rest != ["none"]:
        logging.basicConfig(
            level=logging.DEBUG,
            stream=sys.stdout,
            format="RECORD %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("asyncio").setLevel(logging.INFO)  # not its selector debug lines
    if mode == "connect":
        try:
            JetStreamEventSink.connect(url, "cellos.events.quiet", connect_timeout=1.0, env={})
        except ConnectError:
            print("REFUSED", flush=True)
        else:
            print("CONNECTED", flush=True)
        sys.stdin.readline()
        return 0
    sink = JetStreamEventSink.connect(
        url, "cellos.events.quiet", env={}, reconnect_time_wait=0.05, exit_timeout=0.5
    )
    sink.emit(CloudEventV1(id="quiet-1", source="/quiet", type="cell.quiet"))
    print("READY", flush=True)
    sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
