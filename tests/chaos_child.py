"""A child process for ``tests/test_chaos.py``: emit to a server, then exit without ``close()``.

Run as ``python -m tests.chaos_child URL SUBJECT PREFIX MODE PUBLISH_TIMEOUT`` from the
project root. It prints ``READY`` once ``emit()`` worked, waits for one line on stdin (the
parent may freeze the server meanwhile), queues more events with ``emit_nowait()``, prints
``EXITING`` and returns from ``main`` without closing the sink: the interpreter's exit (and
the library's ``atexit`` hook) must do the rest, quietly and within its exit_timeout.

MODE ``healthy``: the server keeps running; everything queued must still be delivered.
MODE ``hung``: the parent freezes the server before answering; additionally a daemon
thread is blocked in ``emit()`` when the interpreter exits.
MODE ``hung-backlog``: as ``hung``, and the queued events are large enough (60 kB each,
12 MB in all) to fill the socket buffers towards the frozen server.
"""

from __future__ import annotations

import sys
import threading

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, SinkError

#: Events emitted (and acknowledged) before ``READY``.
EMITTED_BEFORE_READY = 5
#: Events queued with ``emit_nowait()`` right before exiting.
QUEUED_AT_EXIT = 20
#: ... and in mode ``hung-backlog``, with this much data each.
BACKLOG_EVENTS = 200
BACKLOG_DATA = "x" * 60_000


def _event(event_id: str, data: object = None) -> CloudEventV1:
    return CloudEventV1(id=event_id, source="/chaos/child", type="cell.chaos.exit", data=data)


def _emit_until_closed(sink: JetStreamEventSink, prefix: str) -> None:
    n = 0
    while True:
        try:
            sink.emit(_event(f"{prefix}-blocked-{n}"))
        except SinkError:
            if sink.closed:
                return
        n += 1


def main(argv: list[str]) -> int:
    url, subject, prefix, mode, publish_timeout = argv
    sink = JetStreamEventSink.connect(url, subject, publish_timeout=float(publish_timeout))
    for n in range(EMITTED_BEFORE_READY):
        sink.emit(_event(f"{prefix}-emitted-{n}"))
    print("READY", flush=True)
    sys.stdin.readline()
    if mode in ("hung", "hung-backlog"):
        threading.Thread(
            target=_emit_until_closed, args=(sink, prefix), name="chaos-child-blocked", daemon=True
        ).start()
    backlog = mode == "hung-backlog"
    for n in range(BACKLOG_EVENTS if backlog else QUEUED_AT_EXIT):
        sink.emit_nowait(_event(f"{prefix}-queued-{n}", BACKLOG_DATA if backlog else None))
    print("EXITING", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
