"""A child process for ``tests/test_spool.py``: a spooling producer the parent can kill -9.

Run as ``python -m tests.spool_child MODE DIR ...`` from the project root. Every line it
prints is flushed at once; ``ACK <id>`` means that event's ``emit()`` returned.

MODE ``hold DIR``: open the spool (NATS unreachable), print ``READY <pid>``, wait for stdin
to close.
MODE ``fill DIR FSIZE_LIMIT``: with a file-size limit (``RLIMIT_FSIZE``), emit events while
NATS is unreachable until ``emit()`` raises; print ``ACK`` per stored event, then
``ERROR <class>: <message>``.
MODE ``produce DIR URL PREFIX THREADS``: emit ``<PREFIX>-<thread>-<n>`` from THREADS threads
forever, printing ``ACK`` lines and, every 10 ms, ``DEPTH <spool depth>``; the parent kills it.
MODE ``readonly DIR``: try to open the spool in DIR and print ``ERROR <class>: <message>``.
"""

from __future__ import annotations

import resource
import signal
import sys
import threading
import time

from cellos_sink_jetstream import (
    CloudEventV1,
    JetStreamEventSink,
    SinkError,
    SpoolingEventSink,
)

SUBJECT = "cellos.events.spool"
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()


def event(event_id: str) -> CloudEventV1:
    return CloudEventV1(id=event_id, source="/spool/child", type="cell.spool", data={"x": 1})


def unreachable_sink(url: str) -> JetStreamEventSink:
    return JetStreamEventSink.connect(url, SUBJECT, wait=False, publish_timeout=1.0)


def hold(directory: str, url: str) -> int:
    sink = SpoolingEventSink(unreachable_sink(url), directory)
    say(f"READY {__import__('os').getpid()}")
    sys.stdin.read()
    sink.close()
    return 0


def fill(directory: str, url: str, limit: int) -> int:
    # Past the limit a write fails with EFBIG instead of the process being killed.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sink = SpoolingEventSink(unreachable_sink(url), directory)
    n = 0
    try:
        while True:
            sink.emit(CloudEventV1(id=f"fill-{n}", source="/s", type="t", data="x" * 2000))
            say(f"ACK fill-{n}")
            n += 1
    except SinkError as exc:
        say(f"ERROR {type(exc).__name__}: {exc}")
    sink.close()
    return 0


def readonly(directory: str) -> int:
    try:
        SpoolingEventSink(unreachable_sink("nats://127.0.0.1:1"), directory).close()
    except SinkError as exc:
        say(f"ERROR {type(exc).__name__}: {exc}")
        return 0
    say("OPENED")
    return 0


def produce(directory: str, url: str, prefix: str, threads: int) -> int:
    inner = JetStreamEventSink.connect(url, SUBJECT, wait=False, publish_timeout=1.0)
    sink = SpoolingEventSink(inner, directory)
    say(f"READY {sink.stats().depth}")

    def worker(t: int) -> None:
        n = 0
        while True:
            event_id = f"{prefix}-{t}-{n}"
            sink.emit(event(event_id))
            say(f"ACK {event_id}")
            n += 1

    for t in range(threads):
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    while True:
        say(f"DEPTH {sink.stats().depth}")
        time.sleep(0.01)  # a progress report's pace, not a synchronisation


def main(argv: list[str]) -> int:
    mode, directory, *rest = argv
    if mode == "hold":
        return hold(directory, rest[0])
    if mode == "fill":
        return fill(directory, rest[0], int(rest[1]))
    if mode == "readonly":
        return readonly(directory)
    if mode == "produce":
        return produce(directory, rest[0], rest[1], int(rest[2]))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
