"""The spool without NATS: its SQLite store, the replay logic with a fake inner sink and a
fake clock, and the spooling sink's direct / spool / dead-letter decisions."""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    InvalidEventError,
    InvalidSubjectError,
    JetStreamEventSink,
    PayloadTooLargeError,
    PubAck,
    PublishError,
    PublishTimeoutError,
    ReentrantEmitError,
    SinkClosedError,
    SinkError,
    SpoolError,
    SpoolFullError,
    SpoolingEventSink,
    SpoolLockedError,
    SpoolStats,
)
from cellos_sink_jetstream._replay import OPEN_CIRCUIT_POLL_SECONDS, Replayer
from cellos_sink_jetstream._spool_store import (
    DB_FILE_NAME,
    SCHEMA_VERSION,
    SpoolStore,
    read_lock_holder,
)
from tests._starve import first_replay_of_waits_past_its_deadline
from tests.fakes import InstantPublisher


class WallClock:
    """A settable wall clock (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_event(n: int, tenant: Optional[str] = None) -> CloudEventV1:
    extensions = {} if tenant is None else {"tenantid": tenant}
    return CloudEventV1(
        id=f"evt-{n}", source="/tests", type="cell.test", data={"n": n}, extensions=extensions
    )


def permanent_refusal() -> PublishError:
    error = PublishError("JetStream refused the publish: message size exceeds maximum allowed")
    error.permanent = True
    return error


class ScriptedSink:
    """A plain EventSink whose next outcomes the test scripts.

    ``down`` set: every emit raises ``CircuitOpenError(attempt, retry_after)``.
    ``refuse``: event ids that get a permanent refusal. ``errors``: ids -> error to raise.
    """

    def __init__(self, retry_after: float = 3600.0) -> None:
        self.down = threading.Event()
        self.retry_after = retry_after
        self.refuse: set[str] = set()
        self.errors: dict[str, BaseException] = {}
        self.received: list[str] = []
        self.attempts = 0
        self.closed = False
        self._lock = threading.Lock()

    def emit(self, event: CloudEventV1) -> None:
        with self._lock:
            self.attempts += 1
            if self.down.is_set():
                raise CircuitOpenError(2, self.retry_after)
            if event.id in self.refuse:
                raise permanent_refusal()
            error = self.errors.get(event.id)
            if error is not None:
                raise error
            self.received.append(event.id)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


def fill(store: SpoolStore, clock: WallClock, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        event = make_event(n)
        store.append(event.id, event.to_json(), clock())


# -- the store --------------------------------------------------------------------------


def test_store_keeps_events_in_order_across_reopening(tmp_path: Path, clock: WallClock) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 5)
    store.close()
    store = SpoolStore(str(tmp_path), 1 << 20)
    try:
        rows = store.oldest(10)
        assert [r.event_id for r in rows] == [f"evt-{n}" for n in range(5)]
        assert store.depth == 5
        store.delete([rows[0].seq, rows[1].seq])
        assert [r.event_id for r in store.oldest(10)] == ["evt-2", "evt-3", "evt-4"]
        assert [r.event_id for r in store.oldest(10, after=rows[3].seq)] == ["evt-4"]
        assert store.depth == 3
    finally:
        store.close()


def test_store_runs_wal_with_full_sync_and_records_its_schema_version(tmp_path: Path) -> None:
    SpoolStore(str(tmp_path), 1 << 20).close()
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    store = SpoolStore(str(tmp_path), 1 << 20)
    try:
        # 2 = FULL: every commit fsyncs.
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        store.close()


def test_newer_schema_is_refused_naming_both_versions(tmp_path: Path, clock: WallClock) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 2)
    store.close()
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SpoolError) as info:
        SpoolingEventSink(ScriptedSink(), tmp_path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert f"version {SCHEMA_VERSION} " in str(info.value)
    # Refused, not touched: the events are still there for the newer version.
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    assert db.execute("SELECT count(*) FROM spool").fetchone()[0] == 2
    db.close()
    # And the refused opener released the lock.
    assert read_lock_holder(str(tmp_path)) is None


def test_a_file_that_is_not_a_database_is_a_clear_spool_error(tmp_path: Path) -> None:
    (tmp_path / DB_FILE_NAME).write_bytes(b"this is not an SQLite database, " * 100)
    with pytest.raises(SpoolError, match="move it aside") as info:
        SpoolingEventSink(ScriptedSink(), tmp_path)
    assert str(tmp_path / DB_FILE_NAME) in str(info.value)
    assert isinstance(info.value, SinkError)


def test_a_second_opener_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = SpoolingEventSink(ScriptedSink(), tmp_path)
    try:
        with pytest.raises(SpoolLockedError) as info:
            SpoolingEventSink(ScriptedSink(), tmp_path)
        assert info.value.pid == os.getpid()
        assert str(os.getpid()) in str(info.value)
        assert read_lock_holder(str(tmp_path)) == os.getpid()
    finally:
        first.close()
    # Closing releases the directory.
    assert read_lock_holder(str(tmp_path)) is None
    SpoolingEventSink(ScriptedSink(), tmp_path).close()


def test_over_max_bytes_the_append_fails_and_stores_nothing(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 64 * 1024)
    try:

        def append_until_full() -> None:
            for n in range(10_000):
                event = make_event(n)
                store.append(event.id, event.to_json() + b" " * 1000, clock())

        with pytest.raises(SpoolFullError) as info:
            append_until_full()
        assert info.value.limit == 64 * 1024
        depth = store.depth
        assert 0 < depth < 10_000
        assert len(store.oldest(100_000)) == depth  # the refused event is not there
        # After replay freed room, appends work again.
        store.delete([r.seq for r in store.oldest(depth)])
        fill(store, clock, 1)
        assert store.depth == 1
    finally:
        store.close()


def test_appends_from_many_threads_share_commits(tmp_path: Path, clock: WallClock) -> None:
    store = SpoolStore(str(tmp_path), 1 << 30)
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        barrier.wait()
        for n in range(200):
            event = make_event(t * 1000 + n)
            store.append(event.id, event.to_json(), clock())

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert store.depth == 1600
        assert store.committed_events == 1600
        assert store.commits <= 1600
        # Per thread, the spool holds each thread's events in the order it appended them.
        rows = store.oldest(2000)
        for t in range(8):
            mine = [int(r.event_id[4:]) for r in rows if int(r.event_id[4:]) // 1000 == t]
            assert mine == sorted(mine)
    finally:
        store.close()


# -- the replay logic (fake inner sink, fake clock) -------------------------------------


class FakeWindowSink(ScriptedSink):
    """A ScriptedSink that acks with a PubAck and knows its stream's duplicate window."""

    def __init__(self, window: Optional[float]) -> None:
        super().__init__()
        self.window = window

    def duplicate_window(self, stream: str) -> Optional[float]:
        return self.window


def test_replay_sends_oldest_first_and_deletes_after_the_ack(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 5)
    inner = ScriptedSink()
    replayer = Replayer(store, inner, now=clock, window=2)
    try:
        assert replayer.run_once() is None  # empty afterwards: wait for new events
        assert inner.received == [f"evt-{n}" for n in range(5)]
        assert store.depth == 0
        assert replayer.replayed == 5
        assert replayer.run_once() is None
        assert inner.attempts == 5
    finally:
        store.close()


def test_replay_waits_for_retry_after_while_the_circuit_is_open(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 5)
    inner = ScriptedSink(retry_after=7.5)
    inner.down.set()
    replayer = Replayer(store, inner, now=clock)
    try:
        # One attempt per pass, then the circuit's own wait: no spinning.
        assert replayer.run_once() == 7.5
        assert inner.attempts == 1
        assert store.depth == 5
        inner.down.clear()
        assert replayer.run_once() is None
        assert inner.received == [f"evt-{n}" for n in range(5)]
    finally:
        store.close()


def test_replay_with_a_probe_running_elsewhere_waits_for_the_transition(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 1)
    inner = ScriptedSink(retry_after=0.0)  # 0.0: someone else's probe is running
    inner.down.set()
    replayer = Replayer(store, inner, now=clock)
    try:
        assert replayer.run_once() == OPEN_CIRCUIT_POLL_SECONDS
    finally:
        store.close()


def test_replay_dead_letters_a_permanent_refusal_and_goes_on(
    tmp_path: Path, clock: WallClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 5)
    inner = ScriptedSink()
    inner.refuse.add("evt-1")
    inner.errors["evt-3"] = InvalidSubjectError("tenant id 'a b' is not a subject token")
    replayer = Replayer(store, inner, now=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
            assert replayer.run_once() is None
        assert inner.received == ["evt-0", "evt-2", "evt-4"]
        assert replayer.dead_lettered == 2
        assert [d.event_id for d in store.dead_letters()] == ["evt-1", "evt-3"]
        assert "message size exceeds" in store.dead_letters()[0].error
        assert store.depth == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        # Not retried.
        assert replayer.run_once() is None
        assert inner.attempts == 5
    finally:
        store.close()


def test_replay_backs_off_after_a_transient_failure_and_keeps_the_row(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 3)
    inner = ScriptedSink()
    inner.errors["evt-1"] = PublishTimeoutError("no ack")
    replayer = Replayer(store, inner, now=clock)
    try:
        first = replayer.run_once()
        second = replayer.run_once()
        assert first is not None
        assert second is not None
        assert 0 < first < second  # growing back-off
        assert store.depth == 2
        # Nothing behind the failed event overtook it.
        assert inner.received == ["evt-0"]
        del inner.errors["evt-1"]
        assert replayer.run_once() is None
        assert inner.received == ["evt-0", "evt-1", "evt-2"]
    finally:
        store.close()


def test_replay_counts_events_older_than_the_duplicate_window_and_warns_once_per_run(
    tmp_path: Path, clock: WallClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 20)
    fill(store, clock, 3)
    clock.now += 60
    fill(store, clock, 2, start=3)
    clock.now += 90  # the first three are 150 s old, the last two 90 s
    js = JetStreamEventSink.from_publisher(InstantPublisher(), "cellos.events.x")
    try:
        replayer = Replayer(store, js, now=clock)
        js.duplicate_window = lambda stream=None, timeout=2.0: 120.0  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
            assert replayer.run_once() is None
            fill(store, clock, 1, start=5)
            clock.now += 500
            assert replayer.run_once() is None
        assert replayer.replayed == 6
        assert replayer.replayed_late == 4
        late = [r for r in caplog.records if "duplicate window" in r.getMessage()]
        assert len(late) == 2  # one per run
    finally:
        js.close()
        store.close()


def test_replay_through_a_jetstream_sink_pipelines_in_order(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 22)
    fill(store, clock, 300)
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.x")
    try:
        replayer = Replayer(store, js, now=clock, window=64)
        assert replayer.run_once() is None
        ids = [headers["Nats-Msg-Id"] for _s, _p, headers in publisher.received]
        assert ids == [f"evt-{n}" for n in range(300)]
        assert store.depth == 0
    finally:
        js.close()
        store.close()


def test_replay_never_sends_an_event_ahead_of_one_that_outwaited_its_deadline(
    tmp_path: Path, clock: WallClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 22)
    fill(store, clock, 5)
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.x")
    try:
        # evt-0 reaches the front of the queue past its deadline (a starved loop thread):
        # it is not sent, so neither may the events behind it be, or they would be stored
        # before it is sent again.
        first_replay_of_waits_past_its_deadline(monkeypatch, js, "evt-0")
        replayer = Replayer(store, js, now=clock)
        passes = [replayer.run_once() for _ in range(2)]
        ids = [headers["Nats-Msg-Id"] for _s, _p, headers in publisher.received]
        assert ids == [f"evt-{n}" for n in range(5)], passes
        assert passes == [0.0, None]
        assert (store.depth, replayer.replayed) == (0, 5)
    finally:
        js.close()
        store.close()


# -- the spooling sink ------------------------------------------------------------------


@pytest.fixture
def inner() -> ScriptedSink:
    return ScriptedSink()


@pytest.fixture
def sink(tmp_path: Path, inner: ScriptedSink, clock: WallClock) -> Any:
    spooling = SpoolingEventSink(inner, tmp_path / "spool", clock=clock)
    yield spooling
    spooling.close()


def test_with_the_spool_empty_events_go_straight_through(
    sink: SpoolingEventSink, inner: ScriptedSink
) -> None:
    sink.emit(make_event(1))
    sink.emit({"id": "evt-2", "source": "/tests", "type": "cell.test", "specversion": "1.0"})
    assert inner.received == ["evt-1", "evt-2"]
    stats = sink.stats()
    assert isinstance(stats, SpoolStats)
    assert (stats.spooled, stats.depth, stats.oldest_age_s) == (0, 0, 0.0)


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpenError(0, 3600.0),
        PublishTimeoutError("no ack"),
        PublishError("connection down"),
        SinkClosedError("closed underneath"),
    ],
)
def test_unavailable_or_unknown_outcomes_are_spooled_and_emit_returns(
    sink: SpoolingEventSink, inner: ScriptedSink, clock: WallClock, error: BaseException
) -> None:
    inner.errors["evt-1"] = error  # replay meets it too, so the event stays spooled
    sink.emit(make_event(1))
    clock.now += 3
    stats = sink.stats()
    assert (stats.spooled, stats.depth) == (1, 1)
    assert stats.oldest_age_s == 3.0
    assert stats.bytes > 0


def test_while_the_spool_holds_events_new_ones_queue_behind_them(
    sink: SpoolingEventSink, inner: ScriptedSink
) -> None:
    inner.down.set()
    sink.emit(make_event(1))
    inner.down.clear()
    # NATS is back, but evt-1 waits in the spool: evt-2 must not overtake it.
    sink.emit(make_event(2))
    assert sink.drain(10.0)
    assert inner.received == ["evt-1", "evt-2"]
    assert sink.stats().replayed == 2


def test_caller_errors_are_raised_and_never_spooled(
    sink: SpoolingEventSink, inner: ScriptedSink
) -> None:
    for error in (
        InvalidSubjectError("bad tenant"),
        InvalidEventError("data", "not JSON"),
        PayloadTooLargeError(2_000_000, 1_000_000),
        ReentrantEmitError("emit() from the sink's own loop thread"),
    ):
        inner.errors["evt-1"] = error
        with pytest.raises(type(error)):
            sink.emit(make_event(1))
    assert sink.stats().spooled == 0
    with pytest.raises(InvalidEventError):
        sink.emit({"id": "", "source": "/x", "type": "t", "specversion": "1.0"})


def test_invalid_events_are_refused_also_while_spooling(tmp_path: Path, clock: WallClock) -> None:
    js = JetStreamEventSink.from_publisher(InstantPublisher(), "cellos.events.{tenantId}")
    js._breaker.open_for_connect()  # emits fail fast as while NATS is down
    sink = SpoolingEventSink(js, tmp_path, clock=clock)
    try:
        sink.emit(make_event(1, tenant="t1"))
        assert sink.stats().depth == 1
        with pytest.raises(InvalidSubjectError):
            sink.emit(make_event(2, tenant="bad.tenant"))
        assert sink.stats().depth == 1
    finally:
        sink.close()


def test_a_permanent_refusal_is_dead_lettered_once_with_one_warning(
    sink: SpoolingEventSink, inner: ScriptedSink, caplog: pytest.LogCaptureFixture
) -> None:
    inner.refuse.add("evt-1")
    with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
        sink.emit(make_event(1))
    sink.emit(make_event(2))
    assert inner.received == ["evt-2"]
    letters = sink.dead_letters()
    assert [d.event_id for d in letters] == ["evt-1"]
    assert CloudEventV1.from_json(letters[0].payload) == make_event(1)
    assert sink.stats().dead_lettered == 1
    assert sink.stats().depth == 0
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_drain_times_out_while_nats_stays_down(
    sink: SpoolingEventSink, inner: ScriptedSink
) -> None:
    inner.down.set()
    sink.emit(make_event(1))
    assert sink.drain(0.05) is False
    inner.down.clear()
    assert sink.drain(10.0) is True


def test_close_is_idempotent_closes_the_inner_sink_and_keeps_the_spool(
    tmp_path: Path, inner: ScriptedSink, clock: WallClock
) -> None:
    sink = SpoolingEventSink(inner, tmp_path, clock=clock)
    inner.down.set()
    sink.emit(make_event(1))
    sink.close()
    sink.close()
    assert inner.closed
    assert sink.stats().depth == 1  # still readable after close
    with pytest.raises(SinkClosedError):
        sink.emit(make_event(2))
    again = ScriptedSink()
    reopened = SpoolingEventSink(again, tmp_path, clock=clock)
    try:
        assert reopened.drain(10.0)
        assert again.received == ["evt-1"]
    finally:
        reopened.close()


def test_max_bytes_must_be_a_positive_int(tmp_path: Path) -> None:
    from cellos_sink_jetstream import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="max_bytes"):
            SpoolingEventSink(ScriptedSink(), tmp_path, max_bytes=bad)  # type: ignore[arg-type]


def test_an_empty_path_is_a_config_error_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellos_sink_jetstream import ConfigError

    monkeypatch.chdir(tmp_path)
    for bad in ("",):
        with pytest.raises(ConfigError, match="path"):
            SpoolingEventSink(ScriptedSink(), bad)
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_is_a_file_is_a_spool_error_saying_so(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    with pytest.raises(SpoolError, match="not a directory"):
        SpoolingEventSink(ScriptedSink(), file)


def test_the_spool_bound_raises_spool_full_never_drops(
    tmp_path: Path, inner: ScriptedSink, clock: WallClock
) -> None:
    sink = SpoolingEventSink(inner, tmp_path, max_bytes=64 * 1024, clock=clock)
    inner.down.set()
    try:
        stored = 0

        def emit_until_full() -> None:
            nonlocal stored
            for n in range(10_000):
                sink.emit(CloudEventV1(id=f"evt-{n}", source="/t", type="t", data="x" * 900))
                stored += 1

        with pytest.raises(SpoolFullError):
            emit_until_full()
        assert sink.stats().depth == stored
        inner.down.clear()
        assert sink.drain(10.0)
        assert inner.received == [f"evt-{n}" for n in range(stored)]
    finally:
        sink.close()


def test_pubacks_are_not_needed_from_a_plain_inner_sink(tmp_path: Path, clock: WallClock) -> None:
    # A plain EventSink returns None from emit(): nothing to learn about the stream.
    inner = FakeWindowSink(window=1.0)
    sink = SpoolingEventSink(inner, tmp_path, clock=clock)
    try:
        inner.down.set()
        sink.emit(make_event(1))
        clock.now += 100
        inner.down.clear()
        assert sink.drain(10.0)
        assert sink.stats().replayed_late == 0
    finally:
        sink.close()
    assert PubAck("S", 1).seq == 1


def test_a_spooled_event_keeps_the_callers_trace_context(tmp_path: Path, clock: WallClock) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("spool-tests")
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.x")
    js._breaker.open_for_connect()  # NATS "down": the event is spooled
    sink = SpoolingEventSink(js, tmp_path, clock=clock)
    try:
        with tracer.start_as_current_span("supervisor") as span:
            sink.emit(make_event(1))
            trace_id = f"{span.get_span_context().trace_id:032x}"
        stored = sink._store.oldest(1)[0]
        assert trace_id in CloudEventV1.from_json(stored.payload).extensions["traceparent"]
    finally:
        sink.close()


def test_replay_sends_the_stored_json_to_each_tenants_subject(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 22)
    for n, tenant in enumerate(["acme", "globex"]):
        event = make_event(n, tenant=tenant)
        store.append(event.id, event.to_json(), clock(), tenant)
    legacy = make_event(2, tenant="initech")  # a row spooled without its tenant
    store.append(legacy.id, legacy.to_json(), clock())
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.{tenantId}.audit")
    try:
        assert Replayer(store, js, now=clock).run_once() is None
        assert [(subject, payload) for subject, payload, _h in publisher.received] == [
            ("cellos.events.acme.audit", make_event(0, tenant="acme").to_json()),
            ("cellos.events.globex.audit", make_event(1, tenant="globex").to_json()),
            ("cellos.events.initech.audit", legacy.to_json()),
        ]
    finally:
        js.close()
        store.close()


def test_replay_into_a_binary_mode_sink_sends_the_event_as_that_sink_encodes_it(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SpoolStore(str(tmp_path), 1 << 22)
    fill(store, clock, 2)
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.x", content_mode="binary")
    try:
        assert Replayer(store, js, now=clock).run_once() is None
        assert [h["ce-id"] for _s, _p, h in publisher.received] == ["evt-0", "evt-1"]
        assert publisher.received[0][1] == b'{"n":0}'
    finally:
        js.close()
        store.close()


def test_a_version_1_spool_is_upgraded_and_its_events_replayed(
    tmp_path: Path, clock: WallClock
) -> None:
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    db.executescript(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,"
        " payload BLOB NOT NULL, spooled_at REAL NOT NULL);"
        "CREATE TABLE dead_letter (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT"
        " NULL, payload BLOB NOT NULL, spooled_at REAL NOT NULL, failed_at REAL NOT NULL,"
        " error TEXT NOT NULL); PRAGMA user_version=1;"
    )
    db.execute(
        "INSERT INTO spool (event_id, payload, spooled_at) VALUES (?, ?, ?)",
        ("evt-7", make_event(7, tenant="acme").to_json(), clock()),
    )
    db.commit()
    db.close()
    inner = ScriptedSink()
    sink = SpoolingEventSink(inner, tmp_path, clock=clock)
    try:
        assert sink.drain(10.0)
        assert inner.received == ["evt-7"]
    finally:
        sink.close()
    db = sqlite3.connect(tmp_path / DB_FILE_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


class MonotonicClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_replay_through_an_open_jetstream_circuit_waits_for_its_probe_schedule(
    tmp_path: Path, clock: WallClock
) -> None:
    from cellos_sink_jetstream import Connected, Reconnecting

    store = SpoolStore(str(tmp_path), 1 << 22)
    fill(store, clock, 5)
    breaker_clock = MonotonicClock()
    publisher = InstantPublisher()
    js = JetStreamEventSink.from_publisher(publisher, "cellos.events.x", clock=breaker_clock)
    try:
        replayer = Replayer(store, js, now=clock)
        # Connecting in the background: the connect is the running probe. Replay waits for
        # the transition (the cap only guards against a lost wake-up); nothing is sent.
        permit = js._breaker.open_for_connect()
        assert js.debug_state() == Reconnecting(0, 100.0)
        assert replayer.run_once() == OPEN_CIRCUIT_POLL_SECONDS
        # The connect failed: the next probe is due in 0.2 s; replay waits exactly that.
        js._breaker.record_failure(permit)
        assert replayer.run_once() == pytest.approx(0.2)
        assert replayer.run_once() == pytest.approx(0.2)
        assert publisher.received == []
        # Due: replay's first send is the probe; its ack closes the circuit, the rest follow.
        breaker_clock.now += 0.2
        waits = [replayer.run_once() for _ in range(3)]
        assert None in waits
        assert isinstance(js.debug_state(), Connected)
        ids = [headers["Nats-Msg-Id"] for _s, _p, headers in publisher.received]
        assert ids == [f"evt-{n}" for n in range(5)]
    finally:
        js.close()
        store.close()


def test_spool_stats_has_exactly_the_documented_fields() -> None:
    assert [f.name for f in dataclasses.fields(SpoolStats)] == [
        "spooled",
        "replayed",
        "dead_lettered",
        "replayed_late",
        "depth",
        "bytes",
        "oldest_age_s",
        "inner",
    ]
