"""Replay: send the spool's events to the inner sink, oldest first, and delete what was acked.

:class:`Replayer` does one pass at a time (:meth:`Replayer.run_once`) and says how long to
wait before the next; the spooling sink's background thread loops over it. Keeping the
pass free of threads and sleeps lets tests drive it with a fake inner sink and a fake
clock.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import deque
from typing import Any, Callable, Optional

from ._breaker import Connected
from ._errors import (
    BackpressureError,
    CircuitOpenError,
    ConfigError,
    InvalidEventError,
    InvalidSubjectError,
    PublishError,
    SinkClosedError,
)
from ._event import CloudEventV1
from ._requests import SendOrder
from ._seam import PubAck
from ._sink import JetStreamEventSink
from ._sink_protocol import EventSink
from ._spool_store import SpooledEvent, SpoolStore

__all__ = ["Replayer", "ReplayStopped", "describe_refusal", "is_permanent_refusal"]

logger = logging.getLogger("cellos_sink_jetstream")

#: Events in flight at once on the pipelined path.
REPLAY_WINDOW = 512
#: Acknowledged rows deleted per transaction (one fsync each).
DELETE_BATCH = 1024
# While the circuit is open and no probe is due (someone else's probe, or the first
# connect, is running), the wait until the circuit's next transition is capped by this.
OPEN_CIRCUIT_POLL_SECONDS = 1.0
# Waits after a failure that came without a retry_after (a plain EventSink's errors).
FAILURE_BACKOFF_BASE = 0.1
FAILURE_BACKOFF_CAP = 5.0
# Extra wait for a pipelined ack beyond the inner sink's publish timeout: the inner sink
# settles every future by its deadline; this only guards against a sink that does not.
_RESULT_GRACE_SECONDS = 1.0

# Marks a pause whose length the inner sink's circuit decides (see circuit_wait).
_ASK_CIRCUIT = -1.0

#: Errors of the event itself: replaying it again cannot help.
CALLER_ERRORS = (InvalidEventError, InvalidSubjectError, ConfigError)


class ReplayStopped(Exception):
    """The inner sink is closed: replay ends."""


def is_permanent_refusal(error: BaseException) -> bool:
    """Whether JetStream refused this message for good (it would refuse it again)."""
    return isinstance(error, PublishError) and error.permanent


def describe_refusal(error: BaseException) -> str:
    """The text kept with a dead letter."""
    return f"{type(error).__name__}: {error}"[:1000]


class _Settled:
    """A completed outcome for the blocking path, shaped like a future."""

    __slots__ = ("_ack", "_error")

    def __init__(self, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
        self._ack, self._error = ack, error

    def result(self, timeout: Optional[float] = None) -> Optional[PubAck]:
        if self._error is not None:
            raise self._error
        return self._ack

    def cancel(self) -> bool:
        return False


class Replayer:
    """Sends spooled events through ``inner``; one pass per :meth:`run_once`.

    With a :class:`JetStreamEventSink` the pass pipelines up to :data:`REPLAY_WINDOW`
    events with ``emit_nowait()``; with any other sink it calls ``emit()`` one at a time.
    Rows are deleted only after their ack; permanent refusals move to the dead-letter
    table. Counters are read by the spooling sink's ``stats()``.
    """

    def __init__(
        self,
        store: SpoolStore,
        inner: EventSink,
        *,
        now: Callable[[], float],
        on_progress: Callable[[], None] = lambda: None,
        window: int = REPLAY_WINDOW,
    ) -> None:
        """Replay ``store`` into ``inner``; ``now`` is the wall clock (event ages)."""
        self._store = store
        self._inner = inner
        self._pipelined = isinstance(inner, JetStreamEventSink)
        self._now = now
        self._on_progress = on_progress
        self._window = window if self._pipelined else 1
        self._low_water = self._window // 2
        self.replayed = 0
        self.replayed_late = 0
        self.dead_lettered = 0
        # Per run (from a non-empty spool to an empty one): one warning about late events.
        self._late_warned = False
        self._failures = 0
        # The stream's duplicate window by stream name (None: unknown), read once each.
        self._windows: dict[str, Optional[float]] = {}

    # -- one pass --------------------------------------------------------------------

    def run_once(self) -> Optional[float]:
        """Send what the spool holds, oldest first, until it is empty or sending stops.

        Returns ``None`` when the spool is empty (wait for new events), otherwise the
        seconds to wait before the next pass (``0.0``: go on at once).

        Raises:
            ReplayStopped: the inner sink is closed.
            SpoolError: the spool cannot be read or written.
        """
        in_flight: deque[tuple[SpooledEvent, Any]] = deque()
        acked: list[int] = []
        after = 0
        hold: Optional[float] = None  # set when sending must pause
        exhausted = False
        # Once one row of this pass is not sent (it outwaited its deadline in the inner
        # sink's queue on a starved loop thread, say), none behind it is: the next pass
        # sends it again, and it must not land after them.
        order = SendOrder()
        try:
            while True:
                # Refill at half the window, in one read: a read per freed slot would cost
                # an SQLite query per event.
                while hold is None and not exhausted and len(in_flight) <= self._low_water:
                    rows = self._store.oldest(self._window - len(in_flight), after)
                    if not rows:
                        exhausted = True
                        break
                    for row in rows:
                        after = row.seq
                        hold = self._send(row, in_flight, order)
                        if hold is not None:
                            break
                if not in_flight:
                    break
                row, outcome = in_flight.popleft()
                failed = self._settle(row, outcome, acked)
                if failed is not None and hold is None:
                    # Stop sending (later rows would overtake this one); what is in flight
                    # still settles, then the next pass starts again from the oldest row.
                    hold = failed
                if len(acked) >= DELETE_BATCH:
                    self._delete(acked)
        finally:
            for _row, outcome in in_flight:  # only on an exception: leave them to the sink
                outcome.cancel()
            self._delete(acked)
        if hold == _ASK_CIRCUIT:
            # Asked after the in-flight outcomes settled: a probe among them may have
            # closed the circuit meanwhile.
            return self.circuit_wait()
        if hold is not None:
            return hold
        if self._store.depth == 0:
            self._late_warned = False
            return None
        return 0.0

    def _send(
        self, row: SpooledEvent, in_flight: deque[tuple[SpooledEvent, Any]], order: SendOrder
    ) -> Optional[float]:
        """Hand one row to the inner sink; returns a wait when sending must pause."""
        inner: Any = self._inner
        outcome: Any = None
        try:
            if self._pipelined:
                # The stored JSON as it is, without parsing and validating it again
                # (None: this sink needs the event itself, in binary content mode say).
                outcome = inner._emit_encoded_nowait(row.event_id, row.payload, row.tenant, order)
            if outcome is None:
                try:
                    event = CloudEventV1.from_json(row.payload)
                except InvalidEventError as exc:  # written by a version with other rules
                    self._dead_letter(row, exc)
                    return None
                if not self._pipelined:
                    # One at a time (the window is 1): settled before the next is sent.
                    try:
                        inner.emit(event)
                    except Exception as exc:
                        outcome = _Settled(None, exc)
                    else:
                        outcome = _Settled(None, None)
                else:
                    outcome = inner._emit_nowait_in_order(event, order)
        except CircuitOpenError as exc:
            return self._open_circuit_wait(exc)
        except BackpressureError:
            return 0.0 if in_flight else self._backoff()
        except SinkClosedError:
            raise ReplayStopped from None
        except CALLER_ERRORS as exc:
            self._dead_letter(row, exc)
            return None
        except PublishError as exc:
            outcome = _Settled(None, exc)
        in_flight.append((row, outcome))
        return None

    def _settle(self, row: SpooledEvent, outcome: Any, acked: list[int]) -> Optional[float]:
        """Take one outcome; returns a wait when it failed and sending must pause."""
        try:
            ack = outcome.result(timeout=self._result_timeout())
        except CircuitOpenError as exc:
            return self._open_circuit_wait(exc)
        except SinkClosedError:
            raise ReplayStopped from None
        except CALLER_ERRORS as exc:
            self._dead_letter(row, exc)
            return None
        except PublishError as exc:
            if is_permanent_refusal(exc):
                self._dead_letter(row, exc)
                return None
            return self._failure_wait()
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            # Before PublishError, TimeoutError would catch PublishTimeoutError too: only
            # our own wait for a future the inner sink never settled gets here.
            outcome.cancel()
            return 0.0
        except Exception:
            return self._failure_wait()
        self._failures = 0
        acked.append(row.seq)
        self.replayed += 1
        self._check_age(row, ack)
        return None

    # -- helpers ---------------------------------------------------------------------

    def _open_circuit_wait(self, error: Optional[CircuitOpenError]) -> float:
        if not self._pipelined:
            # A plain sink's CircuitOpenError is all we know of its circuit.
            if error is not None and error.retry_after > 0:
                return error.retry_after
            return OPEN_CIRCUIT_POLL_SECONDS if error is not None else self._backoff()
        return _ASK_CIRCUIT

    def circuit_wait(self) -> float:
        """How long the inner JetStream sink's circuit keeps replay waiting (0.0: none)."""
        inner: Any = self._inner
        breaker = inner._breaker
        if isinstance(breaker.state, Connected):
            return 0.0
        retry_after: float = breaker.retry_after()
        if retry_after > 0:
            return retry_after  # the next probe is due then; replay sends it
        if breaker._probe_running:
            # Someone else's probe (or the first connect) is running: its outcome is a
            # transition, which wakes the replay thread; the cap is a safety net.
            return OPEN_CIRCUIT_POLL_SECONDS
        return 0.0  # a probe is due: the next pass sends it

    def _failure_wait(self) -> float:
        # A pipelined failure opened (or will open) the inner circuit, which then decides.
        return _ASK_CIRCUIT if self._pipelined else self._backoff()

    def _backoff(self) -> float:
        delay = float(min(FAILURE_BACKOFF_BASE * 2**self._failures, FAILURE_BACKOFF_CAP))
        self._failures = min(self._failures + 1, 16)
        return delay

    def _result_timeout(self) -> float:
        inner: Any = self._inner
        return float(getattr(inner, "publish_timeout", 5.0)) + _RESULT_GRACE_SECONDS

    def _delete(self, acked: list[int]) -> None:
        if acked:
            self._store.delete(acked)
            acked.clear()
            self._on_progress()

    def _dead_letter(self, row: SpooledEvent, error: BaseException) -> None:
        reason = describe_refusal(error)
        self._store.dead_letter(
            row.event_id,
            row.payload,
            spooled_at=row.spooled_at,
            failed_at=self._now(),
            error=reason,
            seq=row.seq,
        )
        self.dead_lettered += 1
        logger.warning(
            "JetStream refused spooled event %r for good (%s); it moved to the spool's "
            "dead-letter table and is not retried",
            row.event_id,
            reason,
        )
        self._on_progress()

    def _check_age(self, row: SpooledEvent, ack: Optional[PubAck]) -> None:
        if ack is None:
            return
        window = self._duplicate_window(ack.stream)
        if window is None or self._now() - row.spooled_at <= window:
            return
        self.replayed_late += 1
        if not self._late_warned:
            self._late_warned = True
            logger.warning(
                "replaying events spooled longer ago than stream %s's duplicate window "
                "(%gs): one whose first send's outcome was unknown may be stored twice",
                ack.stream,
                window,
            )

    def _duplicate_window(self, stream: str) -> Optional[float]:
        if stream not in self._windows:
            lookup = getattr(self._inner, "duplicate_window", None)
            self._windows[stream] = lookup(stream) if callable(lookup) else None
        return self._windows[stream]
