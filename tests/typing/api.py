"""The public API as a user writes it; checked by ``mypy --strict`` (tox -e type), not run."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import cellos_sink_jetstream as cs
from cellos_sink_jetstream import (
    BreakerState,
    CircuitOpenError,
    CloudEventV1,
    Connected,
    DeadlineClock,
    EventSink,
    FailureCause,
    JetStreamEventSink,
    MessageRejectedError,
    NoopEventSink,
    PubAck,
    PublishTimeoutError,
    Reconnecting,
    SinkStats,
    build_primary_event_sink,
    instrument,
    resolve_tenant_subject,
    with_retry,
)


class SdkStyleEvent:
    """Shaped like an event of the ``cloudevents`` SDK."""

    def get_attributes(self) -> dict[str, Any]:
        return {"specversion": "1.0", "id": "e-3", "source": "/s", "type": "t"}

    def get_data(self) -> Optional[Any]:
        return None


def supervisor() -> None:
    event = CloudEventV1(
        id="evt-1",
        source="/supervisor",
        type="cell.started",
        time=datetime.now(timezone.utc),
        data={"runId": "r-1", "correlation": {"tenantId": "acme"}},
        extensions={"attempt": 1},
    )
    subject: str = resolve_tenant_subject("cellos.events.{tenantId}", event)
    primary: EventSink = build_primary_event_sink(subject)
    primary.emit(event)
    primary.close()

    with JetStreamEventSink.connect(None, "cellos.events.{tenantId}", stream="CELLOS") as sink:
        sink.emit(event)
        ack: PubAck = sink.publish(event)
        seq: int = ack.seq
        future: concurrent.futures.Future[PubAck] = sink.emit_nowait(event)
        done: bool = sink.flush(5.0)
        stats: SinkStats = sink.stats()
        state = sink.debug_state()
        if isinstance(state, (Reconnecting, Connected)):
            pass
        current: BreakerState = sink.state
        if isinstance(current, Reconnecting):
            next_after: float = current.next_after
            del next_after
        sink.emit({"specversion": "1.0", "id": "e-2", "source": "/s", "type": "t"})
        sink.emit(SdkStyleEvent())
        sink.emit(42)  # type: ignore[arg-type]  # EventLike is not Any
        try:
            sink.emit(event)
        except CircuitOpenError as refused:
            cause: FailureCause = refused.cause
            wait: float = refused.retry_after
            if cause is FailureCause.NO_STREAM and isinstance(state, Reconnecting):
                same: FailureCause = state.cause
                del same
            del wait
        except PublishTimeoutError:
            sink.emit(event)  # same id: deduplicated by JetStream
        except MessageRejectedError as rejected:  # this event only: dead-letter it
            status: Optional[int] = rejected.code
            number: Optional[int] = rejected.err_code
            said: str = rejected.description
            del status, number, said
        retried: PubAck = with_retry(
            3, lambda: sink.publish(event), retry_on=(CircuitOpenError,), max_delay=5.0
        )
        del seq, future, done, stats, retried

    fallback: EventSink = NoopEventSink()
    fallback.emit(event)
    result: int = with_retry(3, lambda: 42)
    version: str = cs.__version__
    del result, version


def observability() -> None:
    with JetStreamEventSink.connect(
        None, "cellos.events.{tenantId}", content_mode="binary", trace_context=False
    ) as sink:
        instrument(sink)  # the global MeterProvider
        causes: Mapping[str, int] = sink.stats().failed_by_cause
        del causes
    event: CloudEventV1 = CloudEventV1.from_nats_message(
        {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"}, b""
    )
    del event


def options_are_checked() -> None:
    # Each typo is an error mypy must report: were the options **kwargs: Any again, the
    # ignore would be unused, which strict mypy (warn_unused_ignores) reports instead.
    JetStreamEventSink.connect(None, "a.b", publish_timout=1.0)  # type: ignore[call-arg]
    JetStreamEventSink.connect(None, "a.b", publish_timeout="1")  # type: ignore[arg-type]
    JetStreamEventSink.connect_with_root_ca(
        None,
        "a.b",
        "ca.pem",
        max_inflight=8,  # type: ignore[call-arg]
    )
    JetStreamEventSink.from_publisher(
        NoopPublisher(),
        "a.b",
        retry_attemps=1,  # type: ignore[call-arg]
    )
    build_primary_event_sink("a.b", publish_timout=1.0)  # type: ignore[call-arg]
    build_primary_event_sink("a.b", publish_timeout=1.0, stream="CELLOS").close()
    sink = JetStreamEventSink.connect(
        None,
        "a.b",
        wait=False,
        stream="CELLOS",
        publish_timeout=1.0,
        connect_timeout=1.0,
        max_in_flight=8,
        max_queue=16,
        retry_attempts=1,
        exit_timeout=0.5,
        on_transition=lambda old, new: None,
        clock=lambda: 0.0,
        name="supervisor",
        reconnect_time_wait=0.5,
        trace_context=False,
        content_mode="binary",
    )
    sink.close()


class ManualClock:
    """A test's own deadline clock: ``time()`` and ``call_at()``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[..., object], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> None:
        self.timers.append((when, callback, args))


def deadline_clocks() -> None:
    clock: DeadlineClock = ManualClock()
    JetStreamEventSink.from_publisher(NoopPublisher(), "a.b", deadline_clock=clock).close()
    # An event loop is one too (the default is the sink's own).
    loop_clock: DeadlineClock = asyncio.new_event_loop()
    loop_clock.call_at(loop_clock.time(), print)
    # A bare callable is a breaker clock, not a deadline clock.
    JetStreamEventSink.from_publisher(
        NoopPublisher(),
        "a.b",
        deadline_clock=lambda: 0.0,  # type: ignore[arg-type]
    )


class NoopPublisher:
    """The simple publisher kind ``from_publisher`` accepts."""

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        return PubAck("S", 1)


def spooling() -> None:
    inner = JetStreamEventSink.connect(None, "cellos.events.{tenantId}", wait=False)
    with cs.SpoolingEventSink(inner, "/var/lib/cellos/spool", max_bytes=1 << 30) as sink:
        sink.emit(CloudEventV1(id="e-1", source="/s", type="t"))
        stats: cs.SpoolStats = sink.stats()
        counters: tuple[int, int, int, int] = (
            stats.spooled,
            stats.replayed,
            stats.dead_lettered,
            stats.replayed_late,
        )
        now: tuple[int, int, float] = (stats.depth, stats.bytes, stats.oldest_age_s)
        inner_stats: Optional[SinkStats] = stats.inner
        empty: bool = sink.drain(timeout=5.0)
        letters: list[cs.DeadLetter] = sink.dead_letters()
        reason: str = letters[0].error if letters else ""
        del counters, now, inner_stats, empty, reason
    try:
        cs.SpoolingEventSink(NoopEventSink(), "/tmp/spool").close(timeout=1.0)
    except cs.SpoolLockedError as locked:
        holder: Optional[int] = locked.pid
        del holder
    except cs.SpoolFullError as full:
        limit: int = full.limit
        del limit
    except cs.SpoolError:
        pass
    variables: tuple[str, str] = (cs.ENV_SPOOL_DIR, cs.ENV_SPOOL_MAX_BYTES)
    del variables
