"""The spooling sink against real nats-server processes: outages, startup with NATS down,
dead letters, and the disk's and the directory's failures (each a clear error)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Optional

import pytest

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    Connected,
    ConnectError,
    JetStreamEventSink,
    NoopEventSink,
    PayloadTooLargeError,
    PublishError,
    Reconnecting,
    ReentrantEmitError,
    SpoolError,
    SpoolingEventSink,
    SpoolLockedError,
    build_primary_event_sink,
)
from cellos_sink_jetstream._errors import FailureCause
from cellos_sink_jetstream._replay import Replayer
from cellos_sink_jetstream._server import free_port
from cellos_sink_jetstream._spool_store import SpoolStore
from tests._nats import STREAM_NAME, read_stream, stage_stream
from tests._polling import wait_until
from tests._starve import first_replay_of_waits_past_its_deadline
from tests.conftest import ServerFactory, StagedStream

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUBJECT = "cellos.events.spool"


def make_event(event_id: str, data: Any = None) -> CloudEventV1:
    return CloudEventV1(id=event_id, source="/tests/spool", type="cell.spool", data=data)


def stored_ids(url: str, stream: str = STREAM_NAME) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in read_stream(url, stream) if m.headers]


def connect(url: str, **options: Any) -> JetStreamEventSink:
    options.setdefault("publish_timeout", 1.0)
    return JetStreamEventSink.connect(url, SUBJECT, **options)


# -- the direct path and an outage ------------------------------------------------------


def test_while_the_spool_is_empty_events_go_straight_to_jetstream(
    stream: StagedStream, tmp_path: Path
) -> None:
    with SpoolingEventSink(connect(stream.url), tmp_path) as sink:
        for n in range(20):
            sink.emit(make_event(f"direct-{n}"))
        stats = sink.stats()
        assert (stats.spooled, stats.depth) == (0, 0)
        assert stats.inner is not None
        assert stats.inner.published == 20
    assert stored_ids(stream.url) == [f"direct-{n}" for n in range(20)]


def test_an_outage_is_spooled_and_replayed_in_order_exactly_once(
    stream: StagedStream, tmp_path: Path
) -> None:
    inner = connect(stream.url, stream=STREAM_NAME)
    with SpoolingEventSink(inner, tmp_path) as sink:
        sink.emit(make_event("before"))
        stream.server.kill()
        for n in range(50):
            sink.emit(make_event(f"outage-{n}"))  # returns: durably spooled
        assert sink.stats().depth >= 49  # the first may have timed out on the dead socket
        stream.server.start()
        assert sink.drain(30.0)
        sink.emit(make_event("after"))
        stats = sink.stats()
        assert stats.replayed == stats.spooled >= 49
        assert stats.replayed_late == 0
    ids = stored_ids(stream.url)
    # The whole list on failure: it failed once under load (outage-1 stored second),
    # not reproduced since; this tells a late outage-0 from a lost one.
    assert ids == ["before", *[f"outage-{n}" for n in range(50)], "after"], (ids, stats)


def test_replay_keeps_the_order_when_an_event_outwaits_its_deadline_in_the_queue(
    stream: StagedStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test above failed once under CPU load with outage-0 stored after outage-1: on a
    # starved loop thread, outage-0 reached the front of the queue past its deadline and
    # was not sent, the events behind it (later deadlines) were, and the next pass sent
    # outage-0 last.
    store = SpoolStore(str(tmp_path), 1 << 22)
    inner = connect(stream.url, stream=STREAM_NAME)
    try:
        for n in range(20):
            event = make_event(f"spooled-{n}")
            store.append(event.id, event.to_json(), 0.0)
        first_replay_of_waits_past_its_deadline(monkeypatch, inner, "spooled-0")
        replayer = Replayer(store, inner, now=lambda: 0.0)
        passes = [replayer.run_once() for _ in range(2)]
        assert (store.depth, replayer.replayed) == (0, 20), passes
    finally:
        inner.close()
        store.close()
    assert stored_ids(stream.url) == [f"spooled-{n}" for n in range(20)]


# -- startup with NATS down -------------------------------------------------------------


def test_connect_without_waiting_returns_with_the_circuit_open_then_closes_it(
    nats_server_factory: ServerFactory,
) -> None:
    server = nats_server_factory(start=False)
    sink = connect(server.url, wait=False, connect_timeout=0.5, clock=lambda: 42.0)
    try:
        assert sink.debug_state() == Reconnecting(0, 42.0)  # open since "now"
        with pytest.raises(CircuitOpenError) as info:
            sink.emit(make_event("too-early"))
        assert info.value.cause is FailureCause.CONNECTION_DOWN
        server.start()
        wait_until(
            lambda: isinstance(sink.debug_state(), Connected), 30, "the circuit never closed"
        )
        stage_stream(server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=120)
        sink.emit(make_event("on-time"))
    finally:
        sink.close()
    assert stored_ids(server.url) == ["on-time"]


def test_close_while_still_connecting_in_the_background_returns(
    nats_server_factory: ServerFactory,
) -> None:
    server = nats_server_factory(start=False)
    # Repeated: closing as an attempt is refused used to leave the thread reconnecting.
    for _ in range(20):
        before = set(threading.enumerate())
        sink = connect(server.url, wait=False, connect_timeout=0.5)
        # Only this sink's thread: one that an earlier test's sink (closed with a deadline,
        # or dropped and closing in the background) may still be ending is not this one's.
        started = [
            t
            for t in threading.enumerate()
            if t not in before and t.name == "cellos-sink-jetstream"
        ]
        assert started, "the sink started no background thread"
        sink.close(timeout=5.0)
        assert sink.closed
        assert not [t for t in started if t.is_alive()]


def test_build_primary_event_sink_with_a_spool_dir_spools_until_nats_exists(
    nats_server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = nats_server_factory(start=False)
    env = {"NATS_URL": server.url, "CELL_OS_SPOOL_DIR": str(tmp_path / "spool")}
    sink = build_primary_event_sink(SUBJECT, env=env, connect_timeout=0.5, publish_timeout=1.0)
    try:
        assert isinstance(sink, SpoolingEventSink)
        for n in range(20):
            sink.emit(make_event(f"early-{n}"))
        assert sink.stats().depth == 20
        server.start()
        stage_stream(server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=120)
        assert sink.drain(30.0)
    finally:
        sink.close()
    assert stored_ids(server.url) == [f"early-{n}" for n in range(20)]


def test_build_primary_event_sink_with_a_spool_dir_and_nats_up_sends_directly(
    stream: StagedStream, tmp_path: Path
) -> None:
    env = {
        "NATS_URL": stream.url,
        "CELL_OS_SPOOL_DIR": str(tmp_path),
        "CELL_OS_SPOOL_MAX_BYTES": "5000000",
    }
    sink = build_primary_event_sink(SUBJECT, env=env)
    try:
        assert isinstance(sink, SpoolingEventSink)
        assert sink._store.max_bytes == 5_000_000
        assert isinstance(sink.inner, JetStreamEventSink)
        assert isinstance(sink.inner.debug_state(), Connected)
        sink.emit(make_event("direct"))
        assert sink.stats().spooled == 0
    finally:
        sink.close()
    assert stored_ids(stream.url) == ["direct"]


def test_the_spool_dir_keeps_require_and_noop_meaning_what_they_meant(tmp_path: Path) -> None:
    env = {
        "NATS_URL": "nats://127.0.0.1:1",
        "CELL_OS_SPOOL_DIR": str(tmp_path),
        "CELL_OS_REQUIRE_JETSTREAM": "1",
    }
    with pytest.raises(ConnectError, match="CELL_OS_REQUIRE_JETSTREAM"):
        build_primary_event_sink(SUBJECT, env=env, connect_timeout=0.3)
    env = {**env, "CELL_OS_REQUIRE_JETSTREAM": "0", "CELL_OS_USE_NOOP_SINK": "1"}
    assert isinstance(build_primary_event_sink(SUBJECT, env=env), NoopEventSink)


def test_a_bad_spool_max_bytes_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    from cellos_sink_jetstream import ConfigError

    env = {"CELL_OS_SPOOL_DIR": str(tmp_path), "CELL_OS_SPOOL_MAX_BYTES": "lots"}
    with pytest.raises(ConfigError, match="CELL_OS_SPOOL_MAX_BYTES"):
        build_primary_event_sink(SUBJECT, env=env)


# -- dead letters -----------------------------------------------------------------------


@pytest.fixture
def small_stream(nats_server_factory: ServerFactory) -> str:
    """A server whose stream stores messages of at most 2 kB (max_payload stays 1 MB)."""
    server = nats_server_factory()
    stage_stream(
        server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=120, max_msg_size=2048
    )
    return server.url


def test_a_message_too_large_for_the_stream_is_dead_lettered_once_on_the_direct_path(
    small_stream: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = connect(small_stream)
    with SpoolingEventSink(inner, tmp_path) as sink:
        with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
            sink.emit(make_event("small-1"))
            sink.emit(make_event("large", "x" * 4000))  # returns normally
            sink.emit(make_event("small-2"))
        letters = sink.dead_letters()
        assert [d.event_id for d in letters] == ["large"]
        assert "maximum" in letters[0].error
        stats = sink.stats()
        assert (stats.dead_lettered, stats.depth) == (1, 0)
        assert len(sink.dead_letters()) == 1
        # The breaker did not move: no opening, still connected, nothing retried.
        assert isinstance(inner.debug_state(), Connected)
        assert stats.inner is not None
        assert stats.inner.breaker_openings == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "large" in warnings[0].getMessage()
    assert stored_ids(small_stream) == ["small-1", "small-2"]


def test_a_message_too_large_for_the_stream_is_dead_lettered_during_replay(
    nats_server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = nats_server_factory()
    stage_stream(
        server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=120, max_msg_size=2048
    )
    inner = connect(server.url)
    with SpoolingEventSink(inner, tmp_path) as sink:
        server.kill()
        sink.emit(make_event("a"))
        sink.emit(make_event("large", "x" * 4000))
        sink.emit(make_event("b"))
        assert sink.stats().depth == 3
        server.start()
        assert sink.drain(30.0)
        openings = inner.stats().breaker_openings
        sink.emit(make_event("c"))
        assert [d.event_id for d in sink.dead_letters()] == ["large"]
        assert sink.stats().dead_lettered == 1
        assert isinstance(inner.debug_state(), Connected)
        assert inner.stats().breaker_openings == openings
    assert stored_ids(server.url) == ["a", "b", "c"]
    # Once: a new sink on the directory does not send it again.
    with SpoolingEventSink(connect(server.url), tmp_path) as again:
        assert again.drain(5.0)
        assert len(again.dead_letters()) == 1
    assert stored_ids(server.url) == ["a", "b", "c"]


# -- the directory and the disk ---------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.spool_child", *args],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_opener_in_another_process_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    child = spawn("hold", str(tmp_path), "nats://127.0.0.1:1")
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[:1] == ["READY"], child.stderr.read() if child.stderr else ""
        pid = int(line[1])
        with pytest.raises(SpoolLockedError) as info:
            SpoolingEventSink(NoopEventSink(), tmp_path)
        assert info.value.pid == pid
        assert f"process {pid}" in str(info.value)
        # The lock dies with its holder, kill -9 included.
        child.kill()
        child.wait(10)
        SpoolingEventSink(NoopEventSink(), tmp_path).close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.communicate(timeout=10)


def test_a_full_disk_is_a_spool_error_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    # A file-size limit stands in for a full disk: writes past it fail with EFBIG.
    child = spawn("fill", str(tmp_path), "nats://127.0.0.1:1", str(1_500_000))
    out, err = child.communicate(timeout=120)
    lines = out.splitlines()
    acked = [line.split()[1] for line in lines if line.startswith("ACK ")]
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert errors, err
    assert errors[0].startswith(("ERROR SpoolError:", "ERROR SpoolFullError:")), errors
    assert "not stored" in errors[0]
    assert "cellos_sink_jetstream" not in errors[0]
    assert len(acked) > 10
    store = SpoolStore(str(tmp_path), 1 << 30)
    try:
        assert [r.event_id for r in store.oldest(100_000)] == acked
    finally:
        store.close()


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[Path]:
    """A directory nobody may write to: chmod for a user, a read-only tmpfs for root."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_directory_is_a_clear_spool_error(tmp_path: Path) -> None:
    with read_only_directory(tmp_path / "ro") as directory:
        with pytest.raises(SpoolError) as info:
            SpoolingEventSink(NoopEventSink(), directory)
        message = str(info.value)
        assert str(directory) in message
        assert "writable" in message or "read-only" in message


def test_a_spool_error_says_what_happened_without_library_internals(tmp_path: Path) -> None:
    (tmp_path / "spool.sqlite3").write_bytes(b"\x00garbage" * 512)
    with pytest.raises(SpoolError) as info:
        SpoolingEventSink(NoopEventSink(), tmp_path)
    assert "sqlite3." not in str(info.value)
    assert "move it aside" in str(info.value)


# -- helpers shared with the chaos tests ------------------------------------------------


def pump(pipe: Optional[IO[str]], into: queue.Queue[str]) -> None:
    assert pipe is not None
    for line in pipe:
        into.put(line.rstrip("\n"))


def kill_9(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


# -- the duplicate window ---------------------------------------------------------------


def test_the_inner_sink_reads_the_streams_duplicate_window(stream: StagedStream) -> None:
    with connect(stream.url, stream=STREAM_NAME) as inner:
        assert inner.duplicate_window() == 120.0
        assert inner.duplicate_window(STREAM_NAME) == 120.0
        assert inner.duplicate_window("NO_SUCH_STREAM") is None


def test_events_replayed_after_the_duplicate_window_are_counted_with_one_warning(
    nats_server_factory: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory()
    stage_stream(server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=5)
    now = [1_800_000_000.0]
    inner = connect(server.url)
    with SpoolingEventSink(inner, tmp_path, clock=lambda: now[0]) as sink:
        server.kill()
        for n in range(3):
            sink.emit(make_event(f"old-{n}"))
        now[0] += 60  # a minute later: past the 5 s window
        sink.emit(make_event("young"))
        with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
            server.start()
            assert sink.drain(30.0)
        stats = sink.stats()
        assert stats.replayed == 4
        assert stats.replayed_late == 3
    late = [r for r in caplog.records if "duplicate window" in r.getMessage()]
    assert len(late) == 1
    assert stored_ids(server.url) == ["old-0", "old-1", "old-2", "young"]


def test_an_event_over_max_payload_is_refused_while_the_spool_holds_events(
    stream: StagedStream, tmp_path: Path
) -> None:
    # The caller's own error is raised, never spooled, also when new events queue behind
    # spooled ones: the inner sink learned the server's max_payload when it connected.
    inner = connect(stream.url)
    with SpoolingEventSink(inner, tmp_path) as sink:
        stream.server.kill()
        sink.emit(make_event("queued"))  # spooled: NATS is down
        assert sink.stats().depth == 1
        with pytest.raises(PayloadTooLargeError):
            sink.emit(make_event("huge", data="x" * (2 << 20)))
        assert sink.stats().depth == 1
        stream.server.restart()
        assert sink.drain(30)
        assert sink.stats().dead_lettered == 0
    assert stored_ids(stream.url) == ["queued"]


def test_an_event_over_max_payload_is_refused_while_the_circuit_is_open(
    stream: StagedStream, tmp_path: Path
) -> None:
    inner = connect(stream.url)
    with SpoolingEventSink(inner, tmp_path) as sink:
        stream.server.kill()
        with contextlib.suppress(CircuitOpenError, PublishError):
            inner.emit(make_event("opens-the-circuit"))
        wait_until(lambda: isinstance(inner.debug_state(), Reconnecting), 10, "circuit open")
        assert sink.stats().depth == 0
        with pytest.raises(PayloadTooLargeError):
            sink.emit(make_event("huge", data="x" * (2 << 20)))
        assert sink.stats().depth == 0


# -- calls from the inner sink's loop thread (issue #9 item 5) --------------------------


@contextlib.contextmanager
def never_answered(url: str, subject: str) -> Iterator[None]:
    """A core NATS subscriber on ``subject`` that never replies: publishes there hang."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"CONNECT {{}}\r\nSUB {subject} 1\r\nPING\r\n".encode())
        received = b""
        while b"PONG" not in received:
            received += conn.recv(4096)
        yield


@pytest.fixture
def replay_hanging(stream: StagedStream, tmp_path: Path) -> Iterator[SpoolingEventSink]:
    """A spool whose replay has events in flight that are never answered (the inner
    sink's loop is needed to settle them), over a healthy server."""
    stage_stream(stream.url, "V4GOOD", ["v4.good"])
    template = "v4.{tenantId}"
    with never_answered(stream.url, "v4.never"):
        # Spool three events while nothing is reachable: a background connect to a port
        # nobody listens on keeps the circuit open.
        offline = JetStreamEventSink.connect(
            f"nats://127.0.0.1:{free_port()}", template, wait=False, publish_timeout=15.0
        )
        with SpoolingEventSink(offline, tmp_path) as spool:
            for n in range(3):
                spool.emit(tenant_event(f"hang-{n}", "never"))
        inner = JetStreamEventSink.connect(stream.url, template, publish_timeout=15.0)
        spool = SpoolingEventSink(inner, tmp_path)
        try:
            wait_until(lambda: inner.stats().in_flight > 0, 10, "replay sent nothing")
            yield spool
        finally:
            spool.close(timeout=20.0)


def tenant_event(event_id: str, tenant: str) -> CloudEventV1:
    return CloudEventV1(
        id=event_id, source="/tests/spool", type="cell.spool", extensions={"tenantid": tenant}
    )


def on_inner_loop_thread(spool: SpoolingEventSink, call: Callable[[], object]) -> list[object]:
    """Run ``call`` in a done-callback on the inner sink's loop thread; return its outcome."""
    inner = spool.inner
    assert isinstance(inner, JetStreamEventSink)
    outcome: list[object] = []
    caller = threading.get_ident()
    ran_on_caller: list[bool] = []

    def callback(_future: object) -> None:
        if threading.get_ident() == caller:
            # The trigger was acked before the callback was attached, so the future ran
            # it here at once: that would test the caller's thread, not the loop's.
            ran_on_caller.append(True)
            return
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    for _ in range(20):
        ran_on_caller.clear()
        inner.emit_nowait(tenant_event("trigger", "good")).add_done_callback(callback)
        if not ran_on_caller:
            break
    assert not ran_on_caller, "every trigger was acked before its callback was attached"
    wait_until(lambda: outcome, 5, "the call blocked the inner sink's loop thread")
    return outcome


def test_drain_from_the_inner_sinks_loop_thread_is_refused_not_a_deadlock(
    replay_hanging: SpoolingEventSink,
) -> None:
    # It used to wait there for a replay that needs that very loop: forever with no
    # timeout, freezing every publish of the inner sink.
    (outcome,) = on_inner_loop_thread(replay_hanging, replay_hanging.drain)
    assert isinstance(outcome, ReentrantEmitError), outcome
    assert "drain()" in str(outcome)
    replay_hanging.inner.emit(tenant_event("after", "good"))  # the loop still publishes


def test_close_from_the_inner_sinks_loop_thread_closes_in_the_background(
    replay_hanging: SpoolingEventSink,
) -> None:
    # It used to wait there (for the replay thread, which waits for that very loop) up to
    # its timeout, freezing every publish of the inner sink meanwhile.
    (outcome,) = on_inner_loop_thread(replay_hanging, lambda: replay_hanging.close(15.0))
    assert outcome is None
    assert replay_hanging.closed
    wait_until(lambda: replay_hanging.inner.closed, 10, "the inner sink was never closed")


# -- a spooling sink dropped without close() (issue #9 item 9) --------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def use_and_drop(url: str, path: Path, n: int) -> None:
    spool = SpoolingEventSink(connect(url), path)
    spool.emit(make_event(f"dropped-{n}"))


def test_spooling_sinks_dropped_without_close_are_closed_after_garbage_collection(
    stream: StagedStream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Their replay threads held them (and their inner sinks) forever: 10 dropped spools
    # left 20 threads and 80 file descriptors open until the interpreter exited.
    count = 10
    gc.collect()
    threads_before = threading.active_count()
    fds_before = open_fds()
    with caplog.at_level(logging.WARNING, logger="cellos_sink_jetstream"):
        for n in range(count):
            use_and_drop(stream.url, tmp_path / f"spool-{n}", n)
        gc.collect()
        wait_until(
            lambda: threading.active_count() <= threads_before,
            30,
            "the threads of dropped spooling sinks are still running",
        )
        wait_until(lambda: open_fds() <= fds_before, 30, "their files and sockets are open")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == count, warnings  # one each: the spool's, not its inner sink's
    assert all("SpoolingEventSink" in w and "without close()" in w for w in warnings)
    assert sorted(stored_ids(stream.url)) == sorted(f"dropped-{n}" for n in range(count))
    # Each spool directory can be opened again: the lock died with its sink.
    SpoolingEventSink(connect(stream.url), tmp_path / "spool-0").close()
