"""Checking the timeouts callers pass, before anything is queued.

A timeout reaches ``threading.Lock.acquire``, the event loop's timers and deadline
arithmetic; a value that is not a finite, positive number of seconds below
:data:`MAX_TIMEOUT_SECONDS` would raise ``OverflowError`` or ``ValueError`` from deep
inside one of them, possibly after the event was queued. So every public call checks its
timeouts first and raises :class:`ConfigError` naming the argument.
"""

from __future__ import annotations

from typing import Optional

from ._errors import ConfigError

__all__ = ["MAX_TIMEOUT_SECONDS", "check_optional_timeout", "check_timeout"]

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
