"""A child process for ``tests/test_exit.py``: leave events unsettled and exit without ``close()``.

Run as ``python -m tests.exit_child URL SUBJECT MODE EXIT_TIMEOUT [nolog]`` from the project
root (``EXIT_TIMEOUT`` ``default`` leaves the option out). Logging goes to stderr as
``LEVEL message``, unless ``nolog`` is given: then no logging is configured at all. It
emits a few events, prints ``READY`` and waits for one line on stdin (the parent freezes
the server meanwhile), then queues :data:`QUEUED` events with ``emit_nowait()`` and

- MODE ``return``: prints ``EXITING`` and returns from ``main``;
- MODE ``blocked``: prints ``BLOCKED`` and blocks in ``emit()`` until Ctrl-C (SIGINT),
  then prints ``INTERRUPTED`` and exits with status 130.

Either way the library's exit-time flush has events to wait for.
"""

from __future__ import annotations

import logging
import sys

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink

#: Events queued with ``emit_nowait()`` before exiting (or blocking).
QUEUED = 20


def _event(event_id: str) -> CloudEventV1:
    return CloudEventV1(id=event_id, source="/exit/child", type="cell.exit")


def main(argv: list[str]) -> int:
    url, subject, mode, exit_timeout, *rest = argv
    if rest != ["nolog"]:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s"
        )
    options = {} if exit_timeout == "default" else {"exit_timeout": float(exit_timeout)}
    # A publish timeout longer than any wait here: only the exit flush's bound applies.
    sink = JetStreamEventSink.connect(url, subject, publish_timeout=60.0, **options)
    for n in range(3):
        sink.emit(_event(f"{mode}-emitted-{n}"))
    print("READY", flush=True)
    sys.stdin.readline()
    for n in range(QUEUED):
        sink.emit_nowait(_event(f"{mode}-queued-{n}"))
    if mode == "return":
        print("EXITING", flush=True)
        return 0
    try:
        print("BLOCKED", flush=True)
        sink.emit(_event(f"{mode}-blocked"))
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
