"""``cellos-jetstream spool status|replay|export DIR``: look after a spool directory.

``status`` and ``export`` only read (no lock taken, nothing removed), so they work beside
the process that owns the spool. ``replay`` takes the spool over: it fails while another
process holds it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .._spool import SpoolingEventSink
from .._spool_reader import read_only
from ._exit_status import EXIT_FAILURE, EXIT_OK, CliError
from ._output import PROG, err, format_bytes, is_tty, out, plural
from ._target import connect_sink_in_background, option, target_from_args

__all__ = ["cmd_spool_export", "cmd_spool_replay", "cmd_spool_status"]

# How often replay's progress line is redrawn on a terminal.
_PROGRESS_INTERVAL = 0.1


def _format_age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m", f"{secs}s"]
    return "".join(p for p in parts if p)


def cmd_spool_status(args: argparse.Namespace) -> int:
    """Print the spool's depth, size, oldest event's age, dead letters and lock holder."""
    spool = read_only(args.dir)
    try:
        summary = spool.summary()
    finally:
        spool.close()
    oldest = (
        "-"
        if summary.oldest_spooled_at is None
        else _format_age(max(0.0, time.time() - summary.oldest_spooled_at))
    )
    holder = "none" if summary.holder_pid is None else f"process {summary.holder_pid}"
    out(f"spool:        {spool.directory}")
    out(f"depth:        {summary.depth}")
    out(f"bytes:        {summary.bytes} ({format_bytes(summary.bytes)})")
    out(f"oldest:       {oldest}")
    out(f"dead letters: {summary.dead_letters}")
    out(f"locked by:    {holder}")
    return EXIT_OK


def cmd_spool_export(args: argparse.Namespace) -> int:
    """Write the spooled (or dead-lettered) events as JSON lines, oldest first."""
    spool = read_only(args.dir)
    try:
        stdout = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
        for payload in spool.events(dead=args.dead):
            if stdout is not None:
                stdout.write(payload + b"\n")
            else:  # a text-only stdout (a test's capture)
                sys.stdout.write(payload.decode() + "\n")
        sys.stdout.flush()
    finally:
        spool.close()
    return EXIT_OK


def cmd_spool_replay(args: argparse.Namespace) -> int:
    """Send the spool to NATS, then exit: 0 when it is empty, 1 when events remain."""
    target = target_from_args(args)
    if not os.path.isdir(args.dir):
        # Opening would create a fresh, empty spool there and report it drained.
        raise CliError(f"no spool directory {args.dir}: it does not exist")
    inner = connect_sink_in_background(
        target, args.subject, command="spool replay", stream=option(args, "stream")
    )
    try:
        sink = SpoolingEventSink(inner, args.dir)
    except BaseException:
        inner.close()
        raise
    total = sink.stats().depth
    deadline = time.monotonic() + args.timeout
    tty = is_tty(sys.stderr)
    try:
        while True:
            remaining = deadline - time.monotonic()
            # drain() takes a positive timeout only (like every timeout of the sink).
            if remaining <= 0 or sink.drain(min(_PROGRESS_INTERVAL, remaining)):
                break
            if tty:
                left = sink.stats().depth
                done = max(0, total - left)
                width = 30
                filled = width * done // total if total else width
                bar = "#" * filled + "-" * (width - filled)
                sys.stderr.write(f"\r\x1b[2K{PROG}: [{bar}] {done}/{total} replayed")
                sys.stderr.flush()
        stats = sink.stats()
    finally:
        if tty:
            sys.stderr.write("\r\x1b[2K")
        sink.close(timeout=5.0)
    summary = (
        f"{PROG}: replayed {plural(stats.replayed, 'event')} from {sink.path} to "
        f"{target.display_url}"
    )
    if stats.dead_lettered:
        summary += f"; {plural(stats.dead_lettered, 'event')} refused for good (dead letters)"
    if stats.depth:
        err(f"{summary}; {stats.depth} still spooled after {args.timeout:g}s")
        return EXIT_FAILURE
    err(f"{summary}; the spool is empty")
    return EXIT_OK
