"""The reconnect circuit breaker (the seed's P3-01): a pure state machine.

States::

    Connected ──publish fails──▶ Reconnecting(attempt=0, next_after=now + 0.1 s)
    Reconnecting, now <  next_after ──▶ callers fail fast (no permit)
    Reconnecting, now >= next_after ──▶ exactly one caller gets a probe permit
        probe succeeds ──▶ Connected
        probe fails    ──▶ Reconnecting(attempt + 1, now + backoff(attempt + 1))
    Reconnecting, the connection is restored ──▶ Reconnecting(attempt, next_after=now)

``backoff(attempt) = min(0.1 s * 2 ** attempt, 180 s)``: 0.1, 0.2, 0.4 ... 102.4 s, then 180 s.

Each failure is recorded with its :class:`FailureCause`; ``Reconnecting.cause`` is the
cause of the one that last moved the breaker.

The breaker does no I/O and knows nothing of NATS or threads beyond one lock that keeps
its transitions atomic when callers on many threads race. Time comes from an injected
clock; by default ``time.monotonic`` is looked up at every call so that freezegun can
drive it.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from ._errors import FailureCause

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "BreakerState",
    "CircuitBreaker",
    "Connected",
    "Permit",
    "Reconnecting",
    "Refusal",
    "backoff_delay",
]

#: Delay before the first probe after the circuit opens.
BACKOFF_BASE_SECONDS = 0.1
#: Longest delay between two probes.
BACKOFF_CAP_SECONDS = 180.0


@dataclass(frozen=True)
class Connected:
    """Publishes go through."""


@dataclass(frozen=True)
class Reconnecting:
    """The circuit is open: publishes fail fast until ``next_after``, then one probe runs.

    Attributes:
        attempt: How many probes have failed since the circuit opened.
        next_after: When the next probe is allowed, on the breaker's clock
            (``time.monotonic()`` unless a clock was injected).
        cause: Why the circuit is open: the category of the failure that last moved it.
            Not part of equality, so ``Reconnecting(0, t)`` matches whatever the cause.
    """

    attempt: int
    next_after: float
    cause: FailureCause = field(default=FailureCause.CONNECTION_DOWN, compare=False)


BreakerState = Union[Connected, Reconnecting]

_CONNECTED = Connected()


def backoff_delay(
    attempt: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Return the wait before the probe that follows ``attempt`` failed probes."""
    if attempt >= 64:  # 2 ** 64 * base is far past any cap; avoid huge ints.
        return cap
    return float(min(base * (2**attempt), cap))


@dataclass(frozen=True)
class Permit:
    """Admission of one publish, handed back to :meth:`CircuitBreaker.record_success` etc.

    Attributes:
        generation: The breaker's generation when the publish was admitted. A result from
            an older generation (a publish started before the circuit opened) is stale and
            moves nothing.
        is_probe: Whether this publish is the one probe of an open circuit.
    """

    generation: int
    is_probe: bool = False


#: Why a caller must fail fast: ``(attempt, retry_after, cause)``, the arguments of
#: ``CircuitOpenError`` (a plain tuple: it is built on the fast-fail path).
Refusal = tuple[int, float, FailureCause]

TransitionListener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """The Connected / Reconnecting state machine with a single probe.

    Thread-safe: every method takes one internal lock for a few attribute reads and
    writes; nothing blocks while it is held, and listeners are called after it is released.
    """

    def __init__(
        self,
        clock: Optional[Callable[[], float]] = None,
        *,
        base: float = BACKOFF_BASE_SECONDS,
        cap: float = BACKOFF_CAP_SECONDS,
        on_transition: Optional[TransitionListener] = None,
    ) -> None:
        """Create a closed (``Connected``) breaker.

        Args:
            clock: Monotonic clock in seconds; ``None`` means ``time.monotonic`` looked up
                at each call (so ``freezegun`` can drive it).
            base: Delay before the first probe.
            cap: Longest delay between probes.
            on_transition: Called as ``listener(old, new)`` after every state change,
                outside the lock, in the thread that caused it.
        """
        self._clock = clock
        self._base = base
        self._cap = cap
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state: BreakerState = _CONNECTED
        self._generation = 0
        # Reused for every admission while connected, so the hot path allocates nothing.
        self._connected_permit = Permit(0)
        self._probe_running = False
        # Refusals advance an itertools.count: one C call, atomic without a lock, so the
        # refusal path stays lock-free. Reading it advances it too, so the reads are
        # counted (under a lock of their own) and subtracted.
        self._rejection_counter = itertools.count()
        self._rejection_reads = 0
        self._rejection_reads_lock = threading.Lock()

    def now(self) -> float:
        """Return the breaker clock's current time."""
        return self._clock() if self._clock is not None else time.monotonic()

    @property
    def state(self) -> BreakerState:
        """The current state (an immutable snapshot)."""
        return self._state

    def admit(self) -> Optional[Permit]:
        """Ask to publish: a permit, or ``None`` when the caller must fail fast.

        While ``Reconnecting``, the first caller at or after ``next_after`` gets the probe
        permit; everyone else gets ``None`` until that probe is recorded.
        """
        verdict = self.admit_or_refuse()
        return verdict if isinstance(verdict, Permit) else None

    def admit_or_refuse(self) -> Union[Permit, Refusal]:
        """:meth:`admit`, with the :data:`Refusal` itself instead of ``None``.

        The refusal describes the very state that refused, read with one clock read: the
        fast-fail path, which is measured in hundreds of nanoseconds.
        """
        state = self._state
        if state is _CONNECTED:
            return self._connected_permit
        # Refusing needs no lock: the state is immutable and a stale read can only refuse
        # a caller who might have probed, and a later caller will. (self.now() inlined:
        # a call is a tenth of the refusal's cost.)
        clock = self._clock
        now = clock() if clock is not None else time.monotonic()
        if isinstance(state, Reconnecting) and (self._probe_running or now < state.next_after):
            next(self._rejection_counter)
            return state.attempt, max(0.0, state.next_after - now), state.cause
        with self._lock:
            state = self._state
            if isinstance(state, Connected):
                return self._connected_permit
            if self._probe_running or now < state.next_after:
                next(self._rejection_counter)
                return state.attempt, max(0.0, state.next_after - now), state.cause
            self._probe_running = True
            return Permit(self._generation, is_probe=True)

    @property
    def rejections(self) -> int:
        """How many admissions were refused (callers told to fail fast)."""
        with self._rejection_reads_lock:
            refused = next(self._rejection_counter) - self._rejection_reads
            self._rejection_reads += 1
        return refused

    def retry_after(self) -> float:
        """Seconds until a probe may run (0.0 when connected or when one is due)."""
        state = self._state
        if isinstance(state, Connected):
            return 0.0
        return max(0.0, state.next_after - self.now())

    def record_success(self, permit: Permit) -> None:
        """Record that the admitted publish was acknowledged."""
        if not permit.is_probe:
            # Successes while connected change nothing; stale ones must not close the circuit.
            return
        with self._lock:
            old = self._state
            self._probe_running = False
            self._generation += 1
            self._connected_permit = Permit(self._generation)
            self._state = _CONNECTED
        self._notify(old, _CONNECTED)

    def record_failure(
        self, permit: Permit, cause: FailureCause = FailureCause.JETSTREAM_UNAVAILABLE
    ) -> None:
        """Record that the admitted publish failed for a reason that is not the caller's.

        ``cause`` becomes the ``cause`` of the new ``Reconnecting`` state; a stale failure
        changes nothing, its cause included.
        """
        with self._lock:
            old = self._state
            if permit.is_probe:
                assert isinstance(old, Reconnecting)
                attempt = old.attempt + 1
                self._probe_running = False
            elif isinstance(old, Connected) and permit.generation == self._generation:
                attempt = 0
                self._generation += 1
            else:
                return  # A stale failure: the circuit already opened for it.
            delay = backoff_delay(attempt, self._base, self._cap)
            new = Reconnecting(attempt, self.now() + delay, cause)
            self._state = new
        self._notify(old, new)

    def connection_restored(self) -> bool:
        """Record that the connection under an open circuit is back: probe at once.

        Moves ``next_after`` to now and nothing else, so the next caller probes (still
        exactly one), and a probe that fails resumes the schedule where it was
        (``attempt + 1``). Does nothing when connected or when a probe is already due.
        Not a transition: no listener is called. Returns whether ``next_after`` moved.
        """
        with self._lock:
            state = self._state
            if not isinstance(state, Reconnecting):
                return False
            now = self.now()
            if state.next_after <= now:
                return False
            self._state = Reconnecting(state.attempt, now, state.cause)
            return True

    def release(self, permit: Permit) -> None:
        """Record that the admitted publish ended without saying anything about NATS.

        Used when the caller's own input was refused: a probe released this way lets the
        next caller probe at once.
        """
        if permit.is_probe:
            with self._lock:
                self._probe_running = False

    def open_for_connect(self) -> Permit:
        """Start open, as ``Reconnecting(0, now)``, with the first connect as the probe.

        For a sink that returns before it connected: every caller fails fast until the
        returned probe permit is recorded (a success when the connect works). No
        transition is reported: this is the breaker's initial state, not an outage seen.
        """
        with self._lock:
            self._generation += 1
            self._connected_permit = Permit(self._generation)
            self._state = Reconnecting(0, self.now())
            self._probe_running = True
            return Permit(self._generation, is_probe=True)

    def reset(self) -> None:
        """Forget everything: ``Connected``, no probe running, a fresh lock.

        For a forked child, which inherits the parent's state but none of the threads
        that would record the parent's probe (or release a lock they held).
        """
        self._lock = threading.Lock()
        self._generation += 1
        self._connected_permit = Permit(self._generation)
        self._probe_running = False
        self._state = _CONNECTED

    def _notify(self, old: BreakerState, new: BreakerState) -> None:
        if self._on_transition is not None and old != new:
            self._on_transition(old, new)
