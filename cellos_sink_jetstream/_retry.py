"""Bounded retry with exponential backoff, for fast, transient failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Callable, TypeVar

from ._breaker import backoff_delay
from ._errors import ConfigError

__all__ = ["DEFAULT_RETRY_BASE_DELAY", "retry_async", "with_retry"]

T = TypeVar("T")

#: Wait after the first failed attempt; doubled after each further one.
DEFAULT_RETRY_BASE_DELAY = 0.01
_RETRY_MAX_DELAY = 1.0

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
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``f()`` up to ``max_attempts`` times and return its first result.

    Between attempts it sleeps ``base_delay * 2 ** n`` (n = 0, 1, ...; at most 1 s).
    Only exceptions in ``retry_on`` are retried; the last one is re-raised unchanged.

    Example::

        ack = with_retry(3, lambda: sink.emit(event), retry_on=(CircuitOpenError,))
    """
    _check_attempts(max_attempts)
    for attempt in range(max_attempts - 1):
        try:
            return f()
        except retry_on:
            sleep(backoff_delay(attempt, base_delay, _RETRY_MAX_DELAY))
    return f()


async def retry_async(
    max_attempts: int,
    f: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool],
    base_delay: float = DEFAULT_RETRY_BASE_DELAY,
    first_delay: bool = False,
) -> T:
    """The coroutine counterpart of :func:`with_retry`, used inside the sink's loop.

    Retries while ``retry_if(error)`` is true, with the same backoff. ``first_delay``
    waits ``base_delay`` before the first attempt too: the caller already failed once.
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
            await asyncio.sleep(backoff_delay(attempt, base_delay, _RETRY_MAX_DELAY))
    return await f()
