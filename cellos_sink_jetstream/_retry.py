"""Bounded retry with exponential backoff, for fast, transient failures."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from typing import Callable, TypeVar

from ._breaker import backoff_delay
from ._errors import CircuitOpenError, ConfigError
from ._timeouts import MAX_TIMEOUT_SECONDS

__all__ = ["DEFAULT_RETRY_BASE_DELAY", "DEFAULT_RETRY_MAX_DELAY", "retry_async", "with_retry"]

T = TypeVar("T")

#: Wait after the first failed attempt; doubled after each further one.
DEFAULT_RETRY_BASE_DELAY = 0.01
#: Longest single wait of :func:`with_retry`, also when ``CircuitOpenError.retry_after``
#: asks for more (the breaker's own schedule reaches 180 s).
DEFAULT_RETRY_MAX_DELAY = 30.0
# The exponential part stops growing here: it is for blips, not outages (an open circuit
# says how long to wait through retry_after).
_BACKOFF_CAP = 1.0

RetryOn = tuple[type[BaseException], ...]


def _check_attempts(max_attempts: int) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"max_attempts must be an int >= 1, got {max_attempts!r}")


def with_retry(
    max_attempts: int,
    f: Callable[[], T],
    *,
    retry_on: RetryOn = (Exception,),
    base_delay: float = DEFAULT_RETRY_BASE_DELAY,
    max_delay: float = DEFAULT_RETRY_MAX_DELAY,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``f()`` up to ``max_attempts`` times and return its first result.

    After failure ``n`` (0, 1, ...) it sleeps ``base_delay * 2 ** n`` (at most 1 s), or,
    after a :class:`CircuitOpenError`, its ``retry_after`` if that is longer (retrying an
    open circuit sooner would only fail fast again); never longer than ``max_delay``.
    Only exceptions in ``retry_on`` are retried; the last one is re-raised unchanged.

    Example (``publish`` returns the ack; ``emit`` returns ``None``)::

        ack = with_retry(3, lambda: sink.publish(event), retry_on=(CircuitOpenError,))

    Retrying ``PublishTimeoutError`` is safe too: the event keeps its id, so JetStream
    stores it once.
    """
    _check_attempts(max_attempts)
    _check_delay("base_delay", base_delay)
    _check_delay("max_delay", max_delay)
    _check_retry_on(retry_on)
    if not callable(sleep):
        raise ConfigError(f"sleep must be a callable taking seconds, got {sleep!r}")
    for attempt in range(max_attempts - 1):
        try:
            return f()
        except retry_on as exc:
            sleep(_delay_after(exc, attempt, base_delay, max_delay))
    return f()


def _delay_after(error: BaseException, attempt: int, base: float, cap: float) -> float:
    delay = backoff_delay(attempt, base, min(cap, _BACKOFF_CAP))
    if isinstance(error, CircuitOpenError):
        delay = max(delay, min(error.retry_after, cap))
    return delay


def _check_delay(name: str, value: float) -> None:
    # 0 is allowed (no wait); the upper bound is every timeout's. Comparing, not
    # math.isinf(): an int too large for a float would raise OverflowError there, and
    # "not 0 <= value" is also true for NaN, which every comparison would silently pass.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 <= value <= MAX_TIMEOUT_SECONDS:
        raise ConfigError(
            f"{name} must be >= 0 and <= {MAX_TIMEOUT_SECONDS:g} seconds (one day), got {value!r}"
        )


def _check_retry_on(retry_on: object) -> None:
    # A bad retry_on would otherwise surface as a TypeError only when f() first fails.
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise ConfigError(
            f"retry_on must be an exception class or a tuple of them, got {retry_on!r}"
        )


async def retry_async(
    max_attempts: int,
    f: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool],
    base_delay: float = DEFAULT_RETRY_BASE_DELAY,
    first_delay: bool = False,
    deadline: float = math.inf,
) -> T:
    """The coroutine counterpart of :func:`with_retry`, used inside the sink's loop.

    Retries while ``retry_if(error)`` is true, with the same backoff (at most 1 s). ``first_delay``
    waits ``base_delay`` before the first attempt too: the caller already failed once.
    No retry starts after ``deadline`` (on ``time.monotonic()``): the last error is raised
    instead, however many attempts were allowed.
    """
    _check_attempts(max_attempts)
    if first_delay:
        await asyncio.sleep(base_delay)
    for attempt in range(max_attempts - 1):
        try:
            return await f()
        except Exception as exc:
            if not retry_if(exc):
                raise
            delay = backoff_delay(attempt, base_delay, _BACKOFF_CAP)
            if time.monotonic() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
    return await f()
