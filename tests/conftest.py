"""Shared fixtures: real ``nats-server`` processes on 127.0.0.1, one set per test.

Nothing here relies on a server that is already running (e.g. on port 4222): every
fixture starts its own on free ports, keeps its files under the test's ``tmp_path``, and
stops it at teardown, also when the test fails. When a test fails, the end of the log of
every server it used is attached to the report (section "<NatsServer ...> log (tail)").
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import pytest
from hypothesis import settings

from tests._nats import (
    DUPLICATE_WINDOW,
    STREAM_NAME,
    SUBJECT_PREFIX,
    ServerFactory,
    StagedStream,
    TLSFiles,
    make_tls_files,
    stage_stream,
)
from tests._servers import NatsCluster, NatsServer

_SERVERS = pytest.StashKey[list[NatsServer]]()

# No timing assertions in tests: Hypothesis's per-example deadline (200 ms) is one, and on a
# loaded machine it fails examples that merely ran slowly ("Unreliable test timings").
settings.register_profile("cellos", deadline=None)
settings.load_profile("cellos")


def _interrupt_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Treat SIGTERM like Ctrl-C, so a run killed by a CI timeout still stops its servers.

    By default SIGTERM ends Python without unwinding: no fixture teardown, no ``atexit``,
    and every nats-server the run started would be left behind. A handler someone else
    installed is left alone.
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Undo :func:`pytest_configure`'s SIGTERM handler."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _interrupt_on_sigterm
    ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _track(request: pytest.FixtureRequest, server: NatsServer) -> None:
    request.node.stash.setdefault(_SERVERS, []).append(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach the log tail of every server a failed test used to its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            tail = server.log_tail(80)
            if tail:
                report.sections.append((f"{server!r} log (tail)", tail))


@pytest.fixture
def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatsServer]:
    """A started standalone JetStream server (file store under ``tmp_path``)."""
    server = NatsServer(work_dir=tmp_path / "nats")
    _track(request, server)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def stream(nats_server: NatsServer) -> StagedStream:
    """``nats_server`` with stream ``CELLOS`` on ``cellos.events.>``, 2-minute dedup window."""
    stage_stream(
        nats_server.url,
        STREAM_NAME,
        [f"{SUBJECT_PREFIX}.>"],
        duplicate_window=DUPLICATE_WINDOW,
    )
    return StagedStream(
        url=nats_server.url, name=STREAM_NAME, subject_prefix=SUBJECT_PREFIX, server=nats_server
    )


@pytest.fixture
def jetstream_url(stream: StagedStream) -> str:
    """URL of a server that has the ``CELLOS`` stream (see ``stream``)."""
    return stream.url


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A fresh CA, server certificates and an unrelated CA (see ``make_tls_files``)."""
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def nats_server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    """Make extra servers: ``nats_server_factory(cert_file=..., user=..., max_payload=...)``.

    Keyword arguments go to :class:`NatsServer`; ``start=False`` returns it unstarted.
    Every server made is stopped at teardown.
    """
    made: list[NatsServer] = []
    cleanup = contextlib.ExitStack()

    def factory(*, start: bool = True, **options: Any) -> NatsServer:
        options.setdefault("work_dir", tmp_path / f"nats-extra-{len(made) + 1}")
        server = NatsServer(**options)
        made.append(server)
        cleanup.callback(server.close)
        _track(request, server)
        if start:
            server.start()
        return server

    with cleanup:
        yield factory


@pytest.fixture
def cluster3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed JetStream servers ``n1``..``n3`` on loopback, meta leader elected.

    ``cluster3.kill("n2")`` / ``cluster3.restart("n2")`` crash and bring back a member;
    ``tests._nats.stream_leader([s.url for s in cluster3.running], "S")`` names a
    stream's leader.
    """
    cluster = NatsCluster(3, cluster_name="cellos-test", work_dir=tmp_path / "cluster")
    for server in cluster:
        _track(request, server)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _collect_garbage_in_teardown() -> Iterator[None]:
    """Collect each test's garbage in its own teardown.

    An object whose finaliser warns or raises (an unclosed socket, a sink dropped without
    ``close()``) is then reported against the test that dropped it, not against whichever
    later test the collector happened to run in.
    """
    yield
    gc.collect()
