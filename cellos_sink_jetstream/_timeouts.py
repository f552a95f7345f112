"""Checking the timeouts and clocks callers pass, before anything is queued.

A timeout reaches ``threading.Lock.acquire``, the event loop's timers and deadline
arithmetic; a value that is not a finite, positive number of seconds below
:data:`MAX_TIMEOUT_SECONDS` would raise ``OverflowError`` or ``ValueError`` from deep
inside one of them, possibly after the event was queued. So every public call checks its
timeouts first and raises :class:`ConfigError` naming the argument. A clock is read once
at construction for the same reason: the loop thread would be the first to find it broken.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._seam import DeadlineClock

__all__ = [
    "MAX_TIMEOUT_SECONDS",
    "check_clock",
    "check_deadline_clock",
    "check_optional_timeout",
    "check_timeout",
]

#: The longest timeout any call or option accepts: one day. Far below what
#: ``threading.TIMEOUT_MAX`` and the event loop can represent.
MAX_TIMEOUT_SECONDS = 86_400.0


def check_timeout(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number in (0, one day]; else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{name} must be a number of seconds, got {type(value).__name__} {value!r}"
        )
    if not (0 < value <= MAX_TIMEOUT_SECONDS):  # also false for NaN
        raise ConfigError(
            f"{name} must be > 0 and <= {MAX_TIMEOUT_SECONDS:g} seconds (one day), got {value!r}"
        )
    return float(value)


def check_optional_timeout(name: str, value: object) -> Optional[float]:
    """As :func:`check_timeout`, but ``None`` passes (it means the default, or no limit)."""
    return None if value is None else check_timeout(name, value)


def check_clock(clock: Optional[Callable[[], float]], name: str = "clock") -> None:
    """Raise ConfigError unless ``clock`` is None or returns finite seconds."""
    # A clock that cannot be read would fail on the loop thread, where the breaker reads
    # it: ask it once here, while the caller can still hear about it.
    if clock is None:
        return
    try:
        now = clock() if callable(clock) else None
    except Exception as exc:
        raise ConfigError(f"{name}() raised {type(exc).__name__}: {exc}") from None
    if isinstance(now, bool) or not (isinstance(now, int) or _finite_float(now)):
        raise ConfigError(
            f"{name} must be a callable returning finite seconds (like time.monotonic), "
            f"got {clock!r} returning {now!r}"
        )


def check_deadline_clock(deadline_clock: Optional[DeadlineClock]) -> None:
    """Raise ConfigError unless ``deadline_clock`` is None or has a usable time() and call_at()."""
    # As check_clock: the runner would only find out on its loop thread, at a send.
    if deadline_clock is None:
        return
    if not callable(getattr(deadline_clock, "call_at", None)):
        raise ConfigError(
            f"deadline_clock must have time() and call_at(when, callback, *args), as an "
            f"asyncio event loop has; got {deadline_clock!r}"
        )
    check_clock(getattr(deadline_clock, "time", None), "deadline_clock.time")


def _finite_float(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)
