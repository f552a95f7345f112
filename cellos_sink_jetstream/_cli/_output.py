"""Printing to stdout and stderr, and the formats numbers and durations are shown in."""

from __future__ import annotations

import sys
from typing import IO, Any, Optional

#: The command's name, at the start of every line it writes to stderr.
PROG = "cellos-jetstream"


def out(text: str = "") -> None:
    # sys.stdout is looked up at every call: tests swap it (capsys).
    print(text, file=sys.stdout, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def is_tty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def plural(count: int, word: str, many: Optional[str] = None) -> str:
    """``1 event``, ``2 events``: ``count`` and ``word``, plural unless ``count`` is 1."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def format_duration(seconds: float) -> str:
    """Write a duration the way ``nats stream add`` takes it: ``2m``, ``90d``, ``1h30m``."""
    if seconds <= 0:
        return "unlimited"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    parts = []
    remaining = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - unreachable
