"""The spooling sink: nothing is lost while NATS is down.

:class:`SpoolingEventSink` wraps any :class:`EventSink`. While its spool is empty an
event goes straight through the inner sink; when that says NATS is unavailable or the
outcome is unknown, the event is written durably to a local SQLite spool (see
``_spool_store``) and ``emit()`` returns. One background thread replays the spool, oldest
first (see ``_replay``); while the spool holds events, new ones queue behind them so
JetStream receives events in the order their ``emit()`` returned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Optional, Union

from typing_extensions import Self

from ._breaker import BreakerState
from ._errors import (
    ConfigError,
    InvalidSubjectError,
    ReentrantEmitError,
    SinkClosedError,
    SpoolError,
)
from ._event import CloudEventV1, coerce_event
from ._replay import (
    CALLER_ERRORS,
    Replayer,
    ReplayStopped,
    describe_refusal,
    is_permanent_refusal,
)
from ._sink import JetStreamEventSink
from ._sink_protocol import EventLike, EventSink, SinkStats
from ._spool_store import DeadLetter, SpoolStore
from ._subject import TENANT_ID_PLACEHOLDER, resolve_tenant_id
from ._timeouts import check_optional_timeout, check_timeout

__all__ = ["DEFAULT_SPOOL_MAX_BYTES", "DeadLetter", "SpoolStats", "SpoolingEventSink"]

logger = logging.getLogger("cellos_sink_jetstream")

#: Default bound of a spool directory: 1 GiB.
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
# Raised to the caller, never spooled: its own mistakes (emitting from the inner sink's
# loop thread included).
_RAISED = (*CALLER_ERRORS, ReentrantEmitError)
# Waits after an unexpected replay failure (a disk error, say) before the next pass.
_REPLAY_ERROR_BACKOFF = 1.0


@dataclass(frozen=True)
class SpoolStats:
    """A snapshot of a :class:`SpoolingEventSink`.

    Attributes:
        spooled: Events written to the spool since this sink opened.
        replayed: Spooled events JetStream acknowledged since this sink opened.
        dead_lettered: Events moved to the dead-letter table since this sink opened.
        replayed_late: Replayed events older than the stream's duplicate window (they may
            be stored twice if their first send's outcome was unknown).
        depth: Events in the spool now (dead letters not included).
        bytes: Size of the spool's files on disk now.
        oldest_age_s: Age in seconds of the oldest event in the spool now (0.0 when empty).
        inner: The inner sink's :class:`SinkStats` (``None`` if it keeps none).
    """

    spooled: int
    replayed: int
    dead_lettered: int
    replayed_late: int
    depth: int
    bytes: int
    oldest_age_s: float
    inner: Optional[SinkStats]


class SpoolingEventSink:
    """An :class:`EventSink` that spools to local disk what NATS cannot take right now.

    ``emit(event)`` returns once JetStream acknowledged the event or once it is durably in
    the spool; it raises only for the caller's own errors (``InvalidEventError``,
    ``InvalidSubjectError``, ``PayloadTooLargeError``, ``ConfigError``) and for
    :class:`SpoolError` (disk full, read-only, I/O error, over ``max_bytes``). Events
    JetStream refuses for good go to a dead-letter table in the same spool.

    Example::

        inner = JetStreamEventSink.connect(None, "cellos.events.{tenantId}", wait=False)
        with SpoolingEventSink(inner, "/var/lib/cellos/spool") as sink:
            sink.emit(event)
    """

    def __init__(
        self,
        inner: EventSink,
        path: Union[str, os.PathLike[str]],
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        *,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        """Open (or create) the spool in directory ``path`` and start replaying it.

        Args:
            inner: Where events go: a :class:`JetStreamEventSink` (replay then pipelines
                with ``emit_nowait()``) or any other :class:`EventSink`.
            path: The spool directory; one process at a time may use it.
            max_bytes: Most bytes the spool may use on disk; beyond, ``emit()`` raises
                :class:`SpoolFullError`.
            clock: Wall clock for event ages (``time.time`` by default).

        Raises:
            ConfigError: a bad ``max_bytes``, or an empty ``path``.
            SpoolLockedError: another sink (any process) has ``path`` open.
            SpoolError: the directory or its database cannot be used.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self._inner = inner
        self._now = clock if clock is not None else time.time
        directory = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        if not isinstance(directory, str) or not directory:
            # "" would be the working directory, whatever it happens to be.
            raise ConfigError(f"path must name the spool directory, got {path!r}")
        self._store = SpoolStore(directory, max_bytes)
        self._jetstream = inner if isinstance(inner, JetStreamEventSink) else None
        self._spooled = 0
        self._dead_lettered = 0
        self._closed = False
        self._close_lock = threading.Lock()
        # What the replay thread shares with this sink. Nothing the thread holds refers to
        # the sink itself, so a sink dropped without close() is collected (and closed).
        self._control = _ReplayControl()
        self._cond = self._control.cond
        self._replayer = Replayer(
            self._store, inner, now=self._now, on_progress=self._control.notify
        )
        if self._jetstream is not None:
            self._jetstream._add_transition_listener(self._control.interrupt)
        self._thread = threading.Thread(
            target=_replay_loop,
            args=(self._control, self._replayer, self._store),
            name="cellos-sink-jetstream-spool",
            daemon=True,
        )
        self._finalizer = weakref.finalize(
            self, _close_unreferenced, self._control, self._thread, self._store, inner
        )
        # At exit, the inner sink's own exit flush stops replay.
        self._finalizer.atexit = False
        self._thread.start()

    # -- emitting --------------------------------------------------------------------

    def emit(self, event: EventLike) -> None:
        """Deliver ``event`` to JetStream, or durably to the spool when NATS cannot take it.

        Raises:
            InvalidEventError: the event is invalid (``PayloadTooLargeError`` included).
            InvalidSubjectError: its tenant id is not a safe subject token.
            SpoolFullError: the spool is at ``max_bytes``; the event was not stored.
            SpoolError: the disk refused the write; the event was not stored.
            SinkClosedError: the sink is closed.
        """
        if self._closed:
            raise SinkClosedError("the spooling sink is closed; create a new one to emit events")
        if not isinstance(event, CloudEventV1):
            event = coerce_event(event)
        if self._store.depth == 0:
            try:
                self._inner.emit(event)
            except _RAISED:
                raise
            except Exception as exc:
                if is_permanent_refusal(exc):
                    self._dead_letter(event, exc)
                    return
                self._spool(event, exc)
            return
        self._spool(event, None)

    def _refuse_oversized(self, event: CloudEventV1) -> None:
        # The direct path checks the size against the server's max_payload; an event that
        # queues behind spooled ones must hear the same answer now, not as a dead letter.
        # Before the first connect the limit is unknown: replay dead-letters it then.
        inner = self._jetstream
        runner = None if inner is None else inner._runner
        if inner is None or runner is None or runner.publisher is None:
            return
        inner._prepare(event, runner)  # raises PayloadTooLargeError (a caller's error)

    def _spool(self, event: CloudEventV1, reason: Optional[BaseException]) -> None:
        self._refuse_oversized(event)  # the direct path may have failed before its check
        if self._jetstream is not None and self._jetstream._stamp_trace is not None:
            # The caller's span, as the direct path would have sent it: replay runs on
            # another thread, outside that span.
            event = self._jetstream._stamp_trace(event)
        payload = event.to_json()
        try:
            tenant: Optional[str] = resolve_tenant_id(event)
        except InvalidSubjectError:
            if self._jetstream is not None and TENANT_ID_PLACEHOLDER in self._jetstream.subject:
                # The subject is resolved only at replay: refuse an unsafe tenant id now,
                # while the caller can still hear about it.
                raise
            tenant = None  # a template without {tenantId} does not need it
        self._store.append(event.id, payload, self._now(), tenant)
        with self._cond:
            self._spooled += 1
            self._control.new_work = True
            self._cond.notify_all()
        if reason is not None and not self._control.spooling_logged:
            self._control.spooling_logged = True
            logger.warning(
                "NATS cannot take events right now (%s); spooling them to %s until it can",
                type(reason).__name__,
                self._store.directory,
            )

    def _dead_letter(self, event: CloudEventV1, error: BaseException) -> None:
        now = self._now()
        reason = describe_refusal(error)
        self._store.dead_letter(
            event.id, event.to_json(), spooled_at=now, failed_at=now, error=reason
        )
        with self._cond:
            self._dead_lettered += 1
        logger.warning(
            "JetStream refused event %r for good (%s); it is in the dead-letter table of the "
            "spool at %s and is not retried",
            event.id,
            reason,
            self._store.directory,
        )

    # -- reading ---------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """A snapshot of the spool's counters and the inner sink's :class:`SinkStats`."""
        try:
            oldest = self._store.oldest_spooled_at()
        except SpoolError:  # closed, or the disk fails: the counters still are worth having
            oldest = None
        inner_stats: Any = getattr(self._inner, "stats", None)
        replayer = self._replayer
        return SpoolStats(
            spooled=self._spooled,
            replayed=replayer.replayed,
            dead_lettered=self._dead_lettered + replayer.dead_lettered,
            replayed_late=replayer.replayed_late,
            depth=self._store.depth,
            bytes=self._store.size_on_disk(),
            oldest_age_s=0.0 if oldest is None else max(0.0, self._now() - oldest),
            inner=inner_stats() if callable(inner_stats) else None,
        )

    def dead_letters(self) -> list[DeadLetter]:
        """The events JetStream refused for good, with the refusal, oldest first."""
        return self._store.dead_letters()

    @property
    def path(self) -> str:
        """The spool directory (absolute)."""
        return self._store.directory

    @property
    def inner(self) -> EventSink:
        """The wrapped sink."""
        return self._inner

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- lifecycle -------------------------------------------------------------------

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until the spool is empty: everything replayed and acknowledged.

        Returns ``True`` once it is, ``False`` after ``timeout`` seconds (``None``: no
        limit) or when the sink closed first. A bad ``timeout`` is a :class:`ConfigError`;
        from the inner sink's loop thread (a callback), :class:`ReentrantEmitError`.
        """
        timeout = check_optional_timeout("timeout", timeout)
        if self._on_inner_loop_thread():
            raise ReentrantEmitError(
                "drain() was called from the inner sink's background thread (an "
                "on_transition callback or a future's done-callback?); replay needs that "
                "thread, so waiting there would deadlock. Call it from another thread."
            )
        control = self._control
        with self._cond:
            control.interrupted = True  # end a back-off: someone is waiting now
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._store.depth == 0 or control.stopping, timeout
            ) and (self._store.depth == 0)

    def close(self, timeout: float = 10.0) -> None:
        """Stop replay, close the spool and the inner sink; idempotent.

        What is still spooled stays on disk for the next sink on this directory. A bad
        ``timeout`` is a :class:`ConfigError` (and closes nothing). Called from the inner
        sink's loop thread (a callback) or the replay thread (a logging handler), it only
        starts closing, on a thread of its own, and returns at once.
        """
        timeout = check_timeout("timeout", timeout)
        deadline = time.monotonic() + timeout
        with self._close_lock:
            if self._closed:
                return
            self._closed = self._control.closing = True
            self._finalizer.detach()
        if self._on_inner_loop_thread() or threading.current_thread() is self._thread:
            # Waiting for replay there would block what replay waits for (the inner
            # sink's loop), or join the replay thread from itself: close elsewhere.
            _close_in_background(self._control, self._thread, self._store, self._inner, timeout)
            return
        _close(
            self._control,
            self._thread,
            self._store,
            self._inner,
            timeout=timeout,
            deadline=deadline,
        )

    def _on_inner_loop_thread(self) -> bool:
        inner = self._jetstream
        runner = None if inner is None else inner._runner
        return runner is not None and threading.get_ident() == runner.thread_ident

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"depth={self._store.depth}"
        return f"SpoolingEventSink(path={self.path!r}, {state}, inner={self._inner!r})"


_MIN_CLOSE_SECONDS = 0.001
# How long closing a spooling sink that was dropped without close() may take.
_UNREFERENCED_CLOSE_SECONDS = 10.0


class _ReplayControl:
    """The replay thread's state, shared with its sink and guarded by :attr:`cond`.

    New work, an interruption (a drain() caller, or the inner circuit's transition),
    closing. The replay thread holds this and never the sink, so that a sink dropped without
    close() can be collected.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.new_work = False
        self.interrupted = False
        self.stopping = False
        self.closing = False
        self.spooling_logged = False

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def interrupt(self, old: BreakerState, new: BreakerState) -> None:
        with self.cond:
            self.interrupted = True
            self.cond.notify_all()


def _replay_loop(control: _ReplayControl, replayer: Replayer, store: SpoolStore) -> None:
    failing = False
    cond = control.cond
    while True:
        with cond:
            if control.stopping:
                return
            control.new_work = control.interrupted = False
        try:
            delay = replayer.run_once()
        except ReplayStopped:
            logger.info("the inner sink closed: spool replay stops")
            return
        except Exception:
            if control.closing:
                return
            # The whole story once per streak of failures (a failing disk fails again).
            log = logger.debug if failing else logger.exception
            log("spool replay failed; retrying every %gs", _REPLAY_ERROR_BACKOFF)
            failing = True
            delay = _REPLAY_ERROR_BACKOFF
        else:
            failing = False
        with cond:
            cond.notify_all()  # drain() callers re-check the depth
            if delay is None:
                control.spooling_logged = False
                # Idle until an event is spooled; the depth check covers one spooled
                # while this pass ran.
                cond.wait_for(lambda: control.stopping or control.new_work or store.depth > 0)
            elif delay > 0:
                # The circuit is open (or a failure backs off): new events do not help,
                # only time, a transition or close() do.
                cond.wait_for(lambda: control.stopping or control.interrupted, delay)


def _close(
    control: _ReplayControl,
    thread: threading.Thread,
    store: SpoolStore,
    inner: EventSink,
    *,
    timeout: float,
    deadline: float,
) -> None:
    with control.cond:
        control.stopping = True
        control.cond.notify_all()
    # Closing the inner sink settles what replay has in flight, so the thread ends.
    thread.join(max(0.0, min(0.5, deadline - time.monotonic())))
    _close_inner(inner, max(0.0, deadline - time.monotonic()))
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        logger.warning("the spool replay thread did not stop within %gs", timeout)
    store.close()
    depth = store.depth
    if depth:
        logger.info("closing with %d event(s) in the spool at %s", depth, store.directory)


def _close_in_background(
    control: _ReplayControl,
    thread: threading.Thread,
    store: SpoolStore,
    inner: EventSink,
    timeout: float,
) -> None:
    threading.Thread(
        target=_close,
        args=(control, thread, store, inner),
        kwargs={"timeout": timeout, "deadline": time.monotonic() + timeout},
        name="cellos-sink-jetstream-spool-close",
        daemon=True,
    ).start()


def _close_unreferenced(
    control: _ReplayControl, thread: threading.Thread, store: SpoolStore, inner: EventSink
) -> None:
    # A weakref.finalize callback: it may run on any thread (the replay thread or the
    # inner sink's loop included), so it only starts the closing.
    logger.warning(
        "a SpoolingEventSink at %s was garbage-collected without close(); closing it "
        "(what is spooled stays on disk). Call close() or use it in a with block.",
        store.directory,
    )
    control.closing = True
    with contextlib.suppress(RuntimeError):  # at interpreter shutdown: no new threads
        _close_in_background(control, thread, store, inner, _UNREFERENCED_CLOSE_SECONDS)


def _close_inner(inner: EventSink, timeout: float) -> None:
    try:
        if isinstance(inner, JetStreamEventSink):
            # What is left of the spool's own budget, but a timeout must be > 0.
            inner.close(max(timeout, _MIN_CLOSE_SECONDS))
        else:
            inner.close()
    except Exception:  # the spool must still close
        logger.exception("closing the inner sink failed")
