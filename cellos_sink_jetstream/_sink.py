"""The JetStream sink: :class:`JetStreamEventSink`, the blocking facade over the runner.

Its protocol and stats are in ``_sink_protocol.py``, the no-op fallback in
``_noop_sink.py``, and what happens to it at exit, after a fork or when dropped in
``_sink_lifetime.py``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union

from typing_extensions import Self

from ._binary_mode import CONTENT_MODES, BinaryEncoder
from ._breaker import BreakerState, CircuitBreaker, Connected, Permit
from ._config import (
    STREAM_NAME_RE,
    ca_file_from,
    check_positive,
    redact_url,
    resolve_servers,
    root_ca_context,
)
from ._error_type import error_type
from ._errors import (
    BackpressureError,
    CircuitOpenError,
    ConfigError,
    FailureCause,
    MessageRejectedError,
    PayloadTooLargeError,
    PublishError,
    PublishTimeoutError,
    ReentrantEmitError,
    SinkClosedError,
    format_seconds,
)
from ._event import CONTENT_TYPE, CloudEventV1, coerce_event
from ._headers import (
    HEADER_CONTENT_TYPE,
    HEADER_EXPECTED_STREAM,
    HEADER_MSG_ID,
    EncodedHeaders,
    HeaderTemplate,
)
from ._publisher import ConnectOptions, NatsPublisher
from ._requests import BlockingRequest, FutureRequest, PublishRequest, SendOrder
from ._runner import LoopRunner
from ._seam import DeadlineClock, PipelinedPublisher, PubAck, Publisher, PublisherAdapter
from ._sink_lifetime import (
    ABANDONED_RUNNERS,
    EXIT_WAIT_SLICE_SECONDS,
    LIVE_SINKS,
    THREAD_NAME,
    close_unreferenced,
    weakly,
)
from ._sink_protocol import EventLike, SinkStats
from ._subject import (
    TENANT_ID_PLACEHOLDER,
    resolve_tenant_subject,
    subject_for_tenant,
    validate_subject_template,
)
from ._timeouts import check_clock, check_deadline_clock, check_optional_timeout, check_timeout
from ._trace import trace_stamper
from ._visible import warn_visibly

__all__ = ["JetStreamEventSink", "TransitionCallback"]

logger = logging.getLogger("cellos_sink_jetstream")

TransitionCallback = Callable[[BreakerState, BreakerState], None]

_Request = TypeVar("_Request", bound=PublishRequest)

# A caller waits this much longer than the loop's own publish timeout, so the loop's
# verdict (which the breaker needs) normally arrives before the caller gives up.
_CALLER_GRACE_SECONDS = 0.25


@dataclass(frozen=True)
class _Settings:
    subject: str
    stream: Optional[str]
    publish_timeout: float
    connect_timeout: float
    max_in_flight: int
    max_queue: int
    retry_attempts: int
    exit_timeout: float


class JetStreamEventSink:
    """Publishes CloudEvents to NATS JetStream with one blocking call, :meth:`emit`.

    ``emit`` validates and serialises the event in the caller's thread, hands it through a
    janus queue to the sink's one background thread (an asyncio loop with the nats-py
    client), and returns once JetStream acknowledged it. While NATS is down, a circuit
    breaker makes ``emit`` fail fast with :class:`CircuitOpenError`. Thread-safe; use it as
    a context manager or call :meth:`close`.

    Build one with :meth:`connect`, :meth:`connect_with_root_ca` or :meth:`from_publisher`.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        subject: str,
        *,
        display_url: str,
        stream: Optional[str] = None,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_in_flight: int = 256,
        max_queue: int = 8192,
        retry_attempts: int = 3,
        exit_timeout: float = 2.0,
        clock: Optional[Callable[[], float]] = None,
        on_transition: Optional[TransitionCallback] = None,
        trace_context: bool = True,
        content_mode: str = "structured",
        deadline_clock: Optional[DeadlineClock] = None,
    ) -> None:
        """Use :meth:`connect`, :meth:`connect_with_root_ca` or :meth:`from_publisher`."""
        validate_subject_template(subject)
        if not isinstance(trace_context, bool):
            raise ConfigError(f"trace_context must be True or False, got {trace_context!r}")
        if on_transition is not None and not callable(on_transition):
            raise ConfigError(
                f"on_transition must be a callable(old_state, new_state), got {on_transition!r}"
            )
        check_clock(clock)
        check_deadline_clock(deadline_clock)
        if content_mode not in CONTENT_MODES:
            raise ConfigError(
                f"content_mode must be 'structured' or 'binary', got {content_mode!r}"
            )
        if stream is not None and (
            not isinstance(stream, str) or not STREAM_NAME_RE.fullmatch(stream)
        ):
            raise ConfigError(
                f"stream must be a JetStream stream name (printable ASCII without spaces, "
                f"'.', '*', '>', '/' or '\\'), got {stream!r}"
            )
        self._settings = _Settings(
            subject=subject,
            stream=stream,
            publish_timeout=check_timeout("publish_timeout", publish_timeout),
            connect_timeout=check_timeout("connect_timeout", connect_timeout),
            max_in_flight=check_positive("max_in_flight", max_in_flight, int),
            max_queue=check_positive("max_queue", max_queue, int),
            retry_attempts=check_positive("retry_attempts", retry_attempts, int),
            exit_timeout=check_timeout("exit_timeout", exit_timeout),
        )
        self._connect = connect
        self._display_url = display_url
        self._subject_is_fixed = TENANT_ID_PLACEHOLDER not in subject
        fixed_headers = {HEADER_CONTENT_TYPE: CONTENT_TYPE}
        if stream is not None:
            fixed_headers[HEADER_EXPECTED_STREAM] = stream
        self._headers = HeaderTemplate(fixed_headers, HEADER_MSG_ID)
        # Binary content mode: attributes as ce- headers, the body the data alone.
        self._binary: Optional[BinaryEncoder] = None
        if content_mode == "binary":
            del fixed_headers[HEADER_CONTENT_TYPE]
            self._binary = BinaryEncoder(fixed_headers)
        # None unless opentelemetry-api is installed and trace_context is on.
        self._stamp_trace = trace_stamper() if trace_context else None
        self._user_on_transition = on_transition
        # Internal listeners (the spooling sink's replay thread), told after the user's.
        self._transition_listeners: list[TransitionCallback] = []
        self._deadline_clock = deadline_clock
        if clock is None and deadline_clock is not None:
            clock = deadline_clock.time  # one timeline: a timeout opens the circuit on it
        self._breaker = CircuitBreaker(clock, on_transition=self._on_transition)
        self._lock = threading.Lock()
        self._closed = False
        # Set by the exit flush, whose own warning already counted the unsettled events.
        self._exit_flush = False
        self._runner: Optional[LoopRunner] = None
        self._finalizer: Optional[weakref.finalize[..., Any]] = None
        self._published = self._duplicates = self._failed = 0
        self._failed_by_cause: dict[str, int] = {}
        self._probes = self._openings = 0
        LIVE_SINKS.add(self)

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: Optional[str],
        subject: str,
        *,
        ca_file: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        env: Mapping[str, str] = os.environ,
        wait: bool = True,
        stream: Optional[str] = None,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_in_flight: int = 256,
        max_queue: int = 8192,
        retry_attempts: int = 3,
        exit_timeout: float = 2.0,
        on_transition: Optional[TransitionCallback] = None,
        clock: Optional[Callable[[], float]] = None,
        name: str = "cellos-sink-jetstream",
        reconnect_time_wait: float = 0.25,
        trace_context: bool = True,
        content_mode: str = "structured",
    ) -> JetStreamEventSink:
        """Connect to NATS and return a ready sink.

        With ``wait=False`` it returns at once, with the circuit open
        (``Reconnecting(0, now)``: emits raise :class:`CircuitOpenError`), and keeps
        connecting in the background; the first successful connect closes the circuit.

        Args:
            url: Server URL(s), comma-separated; ``None`` reads ``NATS_URL``, else
                ``nats://127.0.0.1:4222``. Credentials may be embedded (``user:pass@``,
                ``token@``); they never appear in logs, errors or ``repr``.
            subject: Subject template, optionally with ``{tenantId}``.
            ca_file: PEM root CA for TLS; ``None`` reads ``NATS_CA_FILE`` (if set).
            tls: A ready ``ssl.SSLContext`` (wins over ``ca_file``).
            env: Where environment variables are read from.
            wait: ``False``: return at once and connect in the background (see above).
            stream: Expected stream name: sets ``Nats-Expected-Stream``.
            publish_timeout: Seconds an emit waits for its ack.
            connect_timeout: Seconds to reach NATS.
            max_in_flight: Most publishes awaiting their ack at once.
            max_queue: Most events queued before ``emit`` blocks.
            retry_attempts: Attempts per publish for fast, transient failures.
            exit_timeout: How long the interpreter's exit waits for the events of a sink
                that was never closed.
            on_transition: ``callback(old_state, new_state)`` on every breaker change.
            clock: The breaker's clock (``time.monotonic`` by default).
            name: Client name shown by the server.
            reconnect_time_wait: Seconds between reconnect attempts.
            trace_context: Add the caller's OpenTelemetry span as
                ``traceparent``/``tracestate``.
            content_mode: ``"structured"``, or ``"binary"``: attributes as ``ce-``
                headers, the body the data alone.

        Raises:
            ConfigError: a bad argument or environment variable.
            ConnectError: NATS was not reachable within ``connect_timeout`` (only with
                ``wait=True``).
        """
        servers, _origin = resolve_servers(url, env)
        if tls is None:
            ca, ca_origin = ca_file_from(ca_file, env, "ca_file")
            if ca is not None:
                tls = root_ca_context(ca, ca_origin)
        display_url = redact_url(",".join(servers))
        reconnect_time_wait = check_timeout("reconnect_time_wait", reconnect_time_wait)
        name = str(name)

        # The loop thread runs this: it holds the sink only weakly, or a sink dropped
        # without close() would never be collected (see close_unreferenced).
        settings_of_sink: list[_Settings] = []

        async def connect_publisher() -> PipelinedPublisher:
            settings = settings_of_sink[0]
            connect_options = ConnectOptions(
                servers=servers,
                display_url=display_url,
                tls=tls,
                connect_timeout=settings.connect_timeout,
                reconnect_time_wait=reconnect_time_wait,
                name=name,
            )
            publisher = await NatsPublisher.connect(connect_options, settings.stream)
            # NATS is back before any probe could tell: let the next emit probe at once.
            publisher.on_reconnected(restored)
            return publisher

        sink = cls(
            connect_publisher,
            subject,
            display_url=display_url,
            stream=stream,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            max_in_flight=max_in_flight,
            max_queue=max_queue,
            retry_attempts=retry_attempts,
            exit_timeout=exit_timeout,
            clock=clock,
            on_transition=on_transition,
            trace_context=trace_context,
            content_mode=content_mode,
        )
        settings_of_sink.append(sink._settings)
        restored = weakly(sink._connection_restored)
        if wait:
            sink._start_runner()
        else:
            sink._start_runner_in_background()
        return sink

    @classmethod
    def connect_with_root_ca(
        cls,
        url: Optional[str],
        subject: str,
        ca_path: Union[str, os.PathLike[str]],
        *,
        env: Mapping[str, str] = os.environ,
        wait: bool = True,
        stream: Optional[str] = None,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_in_flight: int = 256,
        max_queue: int = 8192,
        retry_attempts: int = 3,
        exit_timeout: float = 2.0,
        on_transition: Optional[TransitionCallback] = None,
        clock: Optional[Callable[[], float]] = None,
        name: str = "cellos-sink-jetstream",
        reconnect_time_wait: float = 0.25,
        trace_context: bool = True,
        content_mode: str = "structured",
    ) -> JetStreamEventSink:
        """Connect over TLS, trusting only the private root CA in ``ca_path``.

        The server's certificate must chain to that CA and name the host in the URL
        (hostname verification stays on). Credentials are sent only after the TLS
        handshake; a server without TLS is refused. Other arguments as :meth:`connect`.
        """
        tls = root_ca_context(os.fspath(ca_path), "ca_path")
        return cls.connect(
            url,
            subject,
            tls=tls,
            env=env,
            wait=wait,
            stream=stream,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            max_in_flight=max_in_flight,
            max_queue=max_queue,
            retry_attempts=retry_attempts,
            exit_timeout=exit_timeout,
            on_transition=on_transition,
            clock=clock,
            name=name,
            reconnect_time_wait=reconnect_time_wait,
            trace_context=trace_context,
            content_mode=content_mode,
        )

    @classmethod
    def from_publisher(
        cls,
        publisher: Publisher,
        subject: str,
        *,
        stream: Optional[str] = None,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_in_flight: int = 256,
        max_queue: int = 8192,
        retry_attempts: int = 3,
        exit_timeout: float = 2.0,
        on_transition: Optional[TransitionCallback] = None,
        clock: Optional[Callable[[], float]] = None,
        trace_context: bool = True,
        content_mode: str = "structured",
        deadline_clock: Optional[DeadlineClock] = None,
    ) -> JetStreamEventSink:
        """Build a sink around any :class:`Publisher` (a fake, in tests); no NATS needed.

        The publisher runs on the sink's background loop like the real one. If it has a
        ``max_payload`` attribute, oversized events are refused before publishing. The
        keyword arguments are :meth:`connect`'s, plus one for tests.

        ``deadline_clock`` is the clock that times publish timeouts once an event is sent
        (a :class:`DeadlineClock`: ``time()`` and ``call_at()``; the background event
        loop's own by default). A test passes a fake and advances it to make an ack
        deadline pass without waiting. Unless ``clock`` is given too, the breaker reads
        it as well, so a timeout and the backoff it starts share one timeline. Waits
        before an event is sent (for room in the queue, for its turn) and a blocking
        caller's own bound (``publish_timeout`` and a 0.25 s grace) stay on real time.
        """
        # The runner drives one seam; a simple publisher is adapted to it.
        seam: PipelinedPublisher = (
            publisher if isinstance(publisher, PipelinedPublisher) else PublisherAdapter(publisher)
        )

        async def ready() -> PipelinedPublisher:
            return seam

        sink = cls(
            ready,
            subject,
            display_url=f"<{type(publisher).__name__}>",
            stream=stream,
            publish_timeout=publish_timeout,
            connect_timeout=connect_timeout,
            max_in_flight=max_in_flight,
            max_queue=max_queue,
            retry_attempts=retry_attempts,
            exit_timeout=exit_timeout,
            clock=clock,
            on_transition=on_transition,
            trace_context=trace_context,
            content_mode=content_mode,
            deadline_clock=deadline_clock,
        )
        sink._start_runner()
        return sink

    # -- publishing ----------------------------------------------------------------------

    def emit(self, event: EventLike) -> None:
        """Publish ``event`` and block until JetStream acknowledged it.

        Raises:
            InvalidEventError: the event is invalid (nothing sent; breaker untouched).
            InvalidSubjectError: its tenant id is unsafe (nothing sent; breaker untouched).
            CircuitOpenError: NATS is down; nothing sent, retry after ``retry_after``.
            PublishTimeoutError: no ack within ``publish_timeout``; it may be stored.
            BackpressureError: it waited in the queue until the deadline; never sent.
            PublishError: JetStream refused or could not store it.
            SinkClosedError: the sink is closed.
            ReentrantEmitError: called from the sink's own loop thread.
        """
        # publish()'s steps, not a call to it: on the fast-fail path every frame the
        # CircuitOpenError unwinds through is a tenth of its cost.
        timeout = self._settings.publish_timeout
        self._await_outcome(self._submit(event, BlockingRequest, timeout, timeout), timeout)

    def publish(self, event: EventLike, timeout: Optional[float] = None) -> PubAck:
        """Like :meth:`emit`, but return JetStream's :class:`PubAck`.

        ``timeout`` (default: the sink's ``publish_timeout``) bounds the whole call,
        including time spent waiting for room in the queue.
        """
        if timeout is None:
            timeout = self._settings.publish_timeout
        else:
            timeout = check_timeout("timeout", timeout)
        # One deadline for the whole call: time spent waiting for room in the queue is
        # not given again to the wait for the ack.
        return self._await_outcome(self._submit(event, BlockingRequest, timeout, timeout), timeout)

    @staticmethod
    def _await_outcome(request: BlockingRequest, timeout: float) -> PubAck:
        remaining = request.deadline - time.monotonic()
        if not request.wait(max(0.0, remaining), _CALLER_GRACE_SECONDS):
            if request.given_up_unsent:
                raise BackpressureError(
                    f"the event waited in the sink's queue for {timeout:g}s and was not sent; "
                    f"NATS is slower than the producers: slow down, or raise the timeout"
                )
            raise PublishTimeoutError(
                f"no JetStream ack within {timeout:g}s; the event may still be stored, "
                f"re-emit it (same id) to be sure"
            )
        return request.outcome()

    def emit_nowait(
        self, event: EventLike, timeout: Optional[float] = None
    ) -> concurrent.futures.Future[PubAck]:
        """Queue ``event`` and return a future of its :class:`PubAck` without waiting.

        Blocks only while the queue is full, for at most ``timeout`` seconds (default: the
        sink's ``publish_timeout``), then raises :class:`BackpressureError`. Validation
        errors and :class:`CircuitOpenError` are raised here, not through the future.
        Events queued from one thread are stored in the order they were queued.
        """
        timeout = check_optional_timeout("timeout", timeout)
        timeout = self._settings.publish_timeout if timeout is None else timeout
        return self._submit(event, FutureRequest, self._settings.publish_timeout, timeout).future

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every event queued before this call has its outcome.

        Returns ``True`` if all did within ``timeout`` seconds (``None``: wait as long as
        it takes), ``False`` otherwise (their futures stay pending). Events queued by
        other threads while it waits are not waited for.

        Raises:
            ReentrantEmitError: called from the sink's own loop thread (an
                ``on_transition`` callback, a future's done-callback), where waiting would
                block the loop that settles the events.
        """
        timeout = check_optional_timeout("timeout", timeout)
        runner = self._runner
        if runner is None:
            return True
        _refuse_reentrant_call(runner, "flush()")
        return runner.wait_settled(timeout)

    def _emit_encoded_nowait(
        self,
        event_id: str,
        payload: bytes,
        tenant: Optional[str],
        order: Optional[SendOrder] = None,
    ) -> Optional[concurrent.futures.Future[PubAck]]:
        """``emit_nowait`` of an event this library serialised before (the spool's replay).

        Sends ``payload`` as it is, without parsing and validating it again. Returns
        ``None`` when this sink cannot (binary content mode, or no tenant id recorded
        while the subject template needs one): then emit the event itself. With ``order``,
        it is not sent once an earlier request of that order was not (see SendOrder).
        """
        if self._binary is not None or (tenant is None and not self._subject_is_fixed):
            return None
        template = self._settings.subject
        subject = template if tenant is None else subject_for_tenant(template, tenant)
        return self._emit_nowait_in_order(_Encoded(subject, payload, event_id), order)

    def _emit_nowait_in_order(
        self, event: Union[EventLike, _Encoded], order: Optional[SendOrder]
    ) -> concurrent.futures.Future[PubAck]:
        """``emit_nowait`` with the sink's timeout, as part of ``order`` (the spool's replay)."""
        timeout = self._settings.publish_timeout
        return self._submit(event, FutureRequest, timeout, timeout, order).future

    def _submit(
        self,
        event: Union[EventLike, _Encoded],
        kind: type[_Request],
        timeout: float,
        room_timeout: float,
        order: Optional[SendOrder] = None,
    ) -> _Request:
        """Queue ``event``, to be acknowledged within ``timeout`` seconds.

        Up to ``room_timeout`` seconds of it may be spent waiting for room in the queue.
        """
        if self._closed:
            raise SinkClosedError("the sink is closed; create a new sink to emit events")
        # The breaker first: while the circuit is open, failing fast costs a clock read and
        # a comparison, with no serialisation, no queue item and no future.
        breaker = self._breaker
        permit = breaker.admit_or_refuse()
        if not isinstance(permit, Permit):
            raise CircuitOpenError(*permit)
        now = time.monotonic()
        deadline = now + timeout
        try:
            runner = self._runner or self._current_runner()
            _refuse_reentrant_call(runner, "emit()")
            if isinstance(event, _Encoded):
                subject, payload = event.subject, event.payload
                headers = self._headers.fill(event.event_id)
                self._check_size(payload, headers, runner)
            else:
                subject, payload, headers = self._prepare(event, runner)
        except BaseException:
            breaker.release(permit)
            raise
        if permit.is_probe:
            self._probes += 1
            # Everyone else fails fast until the probe's verdict: the sink's own
            # publish_timeout bounds it, whatever timeout its caller passed.
            deadline = min(deadline, now + self._settings.publish_timeout)
        request = kind(subject, payload, headers, deadline, permit)
        request.order = order
        try:
            runner.submit(request, max(0.0, now + room_timeout - time.monotonic()))
        except BaseException:
            breaker.release(permit)
            raise
        return request

    def _prepare(self, event: EventLike, runner: LoopRunner) -> tuple[str, bytes, EncodedHeaders]:
        if not isinstance(event, CloudEventV1):
            event = coerce_event(event)
        if self._stamp_trace is not None:
            event = self._stamp_trace(event)
        subject = (
            self._settings.subject
            if self._subject_is_fixed
            else resolve_tenant_subject(self._settings.subject, event)
        )
        if self._binary is None:
            payload = event.to_json()
            # The event model guarantees an id that is a safe header value.
            headers = self._headers.fill(event.id)
        else:
            payload, headers = self._binary.encode(event)
        self._check_size(payload, headers, runner)
        return subject, payload, headers

    @staticmethod
    def _check_size(payload: bytes, headers: EncodedHeaders, runner: LoopRunner) -> None:
        limit = getattr(runner.publisher, "max_payload", None)
        if limit is not None:
            size = len(payload) + len(headers.wire)
            if size > limit:
                raise PayloadTooLargeError(size, limit)

    def _on_outcome(
        self, request: PublishRequest, ack: Optional[PubAck], error: Optional[BaseException]
    ) -> None:
        # Runs on the loop thread, before the caller hears the outcome.
        permit = request.permit
        if ack is not None:
            self._published += 1
            if ack.duplicate:
                self._duplicates += 1
            if permit.is_probe:  # nothing else changes the breaker: no call per event
                self._breaker.record_success(permit)
        elif isinstance(error, MessageRejectedError):
            # JetStream refused this message only. Its answer proves NATS is up: as a probe's
            # outcome it closes the circuit; otherwise it moves nothing.
            self._count_failure(error)
            self._breaker.record_success(permit)
        elif isinstance(error, PublishError) and not error.permanent and not self._closed:
            self._count_failure(error)
            self._breaker.record_failure(permit, error.cause or FailureCause.JETSTREAM_UNAVAILABLE)
        else:  # given up, the caller's own error, or closing: nothing learned about NATS
            self._count_failure(error)
            self._breaker.release(permit)

    def _count_failure(self, error: Optional[BaseException]) -> None:
        # Only the loop thread writes these; stats() copies the dict.
        self._failed += 1
        cause = error_type(error)
        self._failed_by_cause[cause] = self._failed_by_cause.get(cause, 0) + 1

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The breaker's state: ``Connected()`` or ``Reconnecting(attempt, next_after)``.

        An immutable snapshot; ``next_after`` is on the ``time.monotonic()`` clock (or the
        injected ``clock``).
        """
        return self._breaker.state

    def debug_state(self) -> BreakerState:
        """The breaker's state, as :attr:`state` (the Rust crate's name for it)."""
        return self._breaker.state

    def stats(self) -> SinkStats:
        """A snapshot of the sink's counters."""
        runner = self._runner
        return SinkStats(
            published=self._published,
            duplicates=self._duplicates,
            failed=self._failed,
            fast_failed=self._breaker.rejections,
            probes=self._probes,
            breaker_openings=self._openings,
            in_flight=0 if runner is None else runner.outstanding(),
            queue_depth=0 if runner is None else runner.queue_depth(),
            failed_by_cause=dict(self._failed_by_cause),
        )

    @property
    def subject(self) -> str:
        """The subject template events are published to."""
        return self._settings.subject

    @property
    def publish_timeout(self) -> float:
        """Seconds an ``emit()`` waits for its ack."""
        return float(self._settings.publish_timeout)

    def duplicate_window(
        self, stream: Optional[str] = None, timeout: float = 2.0
    ) -> Optional[float]:
        """The duplicate window of ``stream`` (default: the configured one), in seconds.

        Read from JetStream; ``None`` when it cannot be known (no stream named, not
        connected, no answer within ``timeout``, or a publisher that cannot ask).

        Raises:
            ConfigError: a bad ``timeout``.
            ReentrantEmitError: called from the sink's own loop thread, which would wait
                for itself.
        """
        timeout = check_timeout("timeout", timeout)
        name = stream if stream is not None else self._settings.stream
        runner = self._runner
        publisher = None if runner is None else runner.publisher
        lookup = getattr(publisher, "stream_duplicate_window", None)
        if name is None or runner is None or not callable(lookup):
            return None
        _refuse_reentrant_call(runner, "duplicate_window()")
        try:
            window = runner.run_coroutine(lookup(name, timeout), timeout + 0.5)
        except Exception as exc:
            logger.debug("reading stream %s's duplicate window failed: %s", name, exc)
            return None
        return None if window is None else float(window)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _connection_restored(self) -> None:
        # On the loop thread, from nats-py's reconnected callback.
        if self._breaker.connection_restored():
            logger.info(
                "the circuit probes NATS JetStream at %s with the next emit: the connection "
                "is back",
                self._display_url,
            )

    def _on_transition(self, old: BreakerState, new: BreakerState) -> None:
        if isinstance(new, Connected):
            logger.info(
                "circuit closed: NATS JetStream at %s acknowledges again", self._display_url
            )
        elif isinstance(old, Connected):
            self._openings += 1
            logger.warning(
                "circuit opened: publishing to NATS JetStream at %s failed (%s); emits fail "
                "fast, next probe in %s",
                self._display_url,
                new.cause.description,
                format_seconds(new.next_after - self._breaker.now()),
            )
        else:
            logger.info(
                "probe %d to NATS JetStream at %s failed (%s); next probe in %s",
                new.attempt,
                self._display_url,
                new.cause.description,
                format_seconds(new.next_after - self._breaker.now()),
            )
        if self._user_on_transition is not None:
            try:
                self._user_on_transition(old, new)
            except Exception:
                logger.exception("the on_transition callback raised; ignored")
        for listener in self._transition_listeners:
            try:
                listener(old, new)
            except Exception:
                logger.exception("a transition listener raised; ignored")

    def _add_transition_listener(self, listener: TransitionCallback) -> None:
        # For wrappers in this package (the spooling sink waits on transitions).
        self._transition_listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------------------

    def _start_runner(self) -> LoopRunner:
        runner = self._make_runner()
        try:
            runner.start(self._settings.connect_timeout + 1.0)
        except BaseException:
            self._forget_runner()  # nothing left to close: no "not closed" warning later
            raise
        self._runner = runner
        return runner

    def _forget_runner(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _make_runner(self) -> LoopRunner:
        settings = self._settings
        runner = LoopRunner(
            self._connect,
            max_in_flight=settings.max_in_flight,
            max_queue=settings.max_queue,
            retry_attempts=settings.retry_attempts,
            on_outcome=weakly(self._on_outcome),
            # A publish(timeout=60) must not hold one of the max_in_flight slots (and the
            # queue behind it) for longer than any other publish would.
            slot_timeout=settings.publish_timeout,
            deadline_clock=self._deadline_clock,
        )
        # Closes the runner should the sink be dropped without close(). Not at exit:
        # _close_all_at_exit closes the sinks still alive then.
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, close_unreferenced, runner, self._display_url, settings.publish_timeout
        )
        self._finalizer.atexit = False
        return runner

    def _start_runner_in_background(self) -> None:
        # The first connect is the open circuit's probe: its success closes the circuit.
        permit = self._breaker.open_for_connect()
        runner = self._make_runner()
        self._runner = runner
        runner.start_in_background(functools.partial(weakly(self._first_connect), permit))

    def _first_connect(self, permit: Permit) -> None:
        self._breaker.record_success(permit)

    def _current_runner(self) -> LoopRunner:
        runner = self._runner
        if runner is not None:
            return runner
        with self._lock:
            # Only a forked child gets here: its runner was abandoned at the fork.
            if self._runner is None:
                self._runner = self._start_runner()
            return self._runner

    def _after_fork_in_child(self) -> None:
        # The parent's thread and connection do not exist here; the child's first emit
        # starts its own. Keep the parent's runner referenced so its finalizers never run
        # against a loop and locks that belong to a thread this process does not have.
        if self._runner is not None:
            ABANDONED_RUNNERS.append(self._runner)
            self._runner = None
            self._forget_runner()
        # Locks held by other parent threads at fork time would stay locked forever here.
        self._lock = threading.Lock()
        # The child's connection is new: the parent's outage (and probe) is not its own.
        self._breaker.reset()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is in flight, close the connection, stop the thread.

        Waits at most ``timeout`` seconds in all. Idempotent and thread-safe; ``emit``
        afterwards raises :class:`SinkClosedError`. Events still without an outcome at
        the deadline fail and are counted in the log: with :class:`PublishTimeoutError`
        when they were sent (the server may still store them: re-emit to be sure), with
        :class:`SinkClosedError` when they were never sent.

        Called from the sink's own loop thread (an ``on_transition`` callback, a future's
        done-callback), it only starts closing, on a thread of its own, and returns at
        once: waiting there would block the loop that delivers the events.
        """
        timeout = check_timeout("timeout", timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            already_closed = self._closed
            self._closed = True
            self._forget_runner()
        runner = self._runner
        if runner is None:
            return
        if threading.get_ident() == runner.thread_ident:
            if not already_closed:
                threading.Thread(
                    target=self._close_runner,
                    args=(runner, timeout, deadline),
                    name=f"{THREAD_NAME}-close",
                    daemon=True,
                ).start()
            return
        if already_closed:
            runner.stop(max(0.0, deadline - time.monotonic()))
            return
        self._close_runner(runner, timeout, deadline)

    def _close_runner(self, runner: LoopRunner, timeout: float, deadline: float) -> None:
        # Keep part of the budget for stopping: cancelling and closing the connection.
        reserve = min(0.5, timeout / 2)
        if not runner.wait_settled(max(0.0, deadline - reserve - time.monotonic())):
            # At exit, the line that announced the wait already counted these events.
            logger.log(
                logging.DEBUG if self._exit_flush else logging.WARNING,
                "closing with %d event(s) not acknowledged yet; those sent fail with "
                "PublishTimeoutError (they may still be stored), the others with "
                "SinkClosedError",
                runner.outstanding(),
            )
        if not runner.stop(max(0.0, deadline - time.monotonic())):
            logger.warning("the sink's background thread did not stop within %gs", timeout)
        LIVE_SINKS.discard(self)

    def _close_at_exit(self) -> None:
        # The atexit flush of a sink the program never closed: bounded by exit_timeout,
        # and said aloud, since the program is only waiting for the sink.
        runner = self._runner
        unsettled = 0 if runner is None else runner.outstanding()
        timeout = self._settings.exit_timeout
        if unsettled:
            # Visible even without logging configured: the program is only waiting for us.
            warn_visibly(
                f"exiting with {unsettled} event(s) unsettled on {self._display_url} (the "
                f"sink was not closed): waiting up to {format_seconds(timeout)} "
                f"(exit_timeout) for their outcome; Ctrl-C stops waiting"
            )
        self._exit_flush = True
        deadline = time.monotonic() + timeout
        if runner is not None:
            # Waited in short slices: a Ctrl-C that the kernel hands to another thread
            # reaches Python's handler, on the main thread, only when a wait returns.
            while not runner.wait_settled(
                min(EXIT_WAIT_SLICE_SECONDS, max(0.0, deadline - time.monotonic()))
            ):
                if time.monotonic() >= deadline:
                    break
        self.close(max(EXIT_WAIT_SLICE_SECONDS / 100, deadline - time.monotonic()))

    def _abandon_at_exit(self) -> None:
        # Ctrl-C during the exit flush: stop waiting, leave the rest to the daemon thread.
        self._closed = True
        runner = self._runner
        if runner is None:
            return
        unsettled = runner.outstanding()
        if unsettled:
            warn_visibly(
                f"exit flush interrupted (Ctrl-C): stopped waiting for {unsettled} unsettled "
                f"event(s) on {self._display_url}; those already sent may still be stored"
            )
        runner.stop(0.0)

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
        state = "closed" if self._closed else type(self._breaker.state).__name__
        return (
            f"JetStreamEventSink(url={self._display_url!r}, subject={self._settings.subject!r}, "
            f"state={state})"
        )


def _refuse_reentrant_call(runner: LoopRunner, call: str) -> None:
    if threading.get_ident() == runner.thread_ident:
        raise ReentrantEmitError(
            f"{call} was called from the sink's own background thread (an on_transition "
            f"callback, a future's done-callback or a logging handler running there?); "
            f"waiting there would deadlock. Call it from another thread."
        )


class _Encoded:
    """An event serialised before (by the spool): what ``_submit`` sends as it is."""

    __slots__ = ("event_id", "payload", "subject")

    def __init__(self, subject: str, payload: bytes, event_id: str) -> None:
        self.subject = subject
        self.payload = payload
        self.event_id = event_id
