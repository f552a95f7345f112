"""Whatever a peer does, the sink's tasks print nothing on stderr (issue #9 item 10).

nats-py, when a peer never answers the handshake's PING, leaves its reconnect task to fail
with ``InvalidStateError``, which asyncio reports as "Task exception was never retrieved"
on stderr. Each case runs in a child process (``tests/quiet_child.py``) whose log goes to
its stdout, so that its stderr shows exactly what bypassed logging.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._nats import stage_stream
from tests._polling import wait_until
from tests.conftest import ServerFactory
from tests.test_connect_handshake import FakePeer, close_without_pong, pong_then_reset

ROOT = Path(__file__).resolve().parent.parent


def start_child(mode: str, url: str, logging: str = "stdout") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.quiet_child", mode, url, logging],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = child.communicate("go\n", timeout=30)
    assert child.returncode == 0, (out, err)
    return out, err


def records(out: str, logger: str = "cellos_sink_jetstream") -> list[str]:
    return [
        line
        for line in out.splitlines()
        if line.startswith("RECORD ") and f" {logger}:" in line and " DEBUG " not in line
    ]


@pytest.mark.fast_path  # see tox env publicpath
def test_a_refused_handshake_prints_nothing_and_logs_one_record() -> None:
    with FakePeer(close_without_pong) as peer:
        out, err = finish(start_child("connect", f"nats://127.0.0.1:{peer.port}"))
    assert err == ""
    assert "REFUSED" in out
    assert "never retrieved" not in out
    assert "Traceback" not in out
    [record] = records(out)
    assert "did not answer PING with PONG" in record


@pytest.mark.fast_path  # see tox env publicpath
@pytest.mark.parametrize("logging", ["stdout", "none"])
def test_a_peer_that_resets_after_pong_prints_nothing(logging: str) -> None:
    # nats-py reconnects to the same peer while connect() waits for JetStream; each
    # reconnect that ends this way used to leave "Task exception was never retrieved ...
    # InvalidStateError" on stderr (a reconnect task cancelled by the next one sets their
    # shared future, then the next one sets it again).
    with FakePeer(pong_then_reset) as peer:
        out, err = finish(start_child("connect", f"nats://127.0.0.1:{peer.port}", logging))
        assert peer.connections >= 2  # it did reconnect
    assert err == ""
    assert "REFUSED" in out
    assert "never retrieved" not in out
    assert "Traceback" not in out


@pytest.mark.fast_path  # see tox env publicpath
@pytest.mark.parametrize("logging", ["stdout", "none"])
def test_a_peer_without_pong_after_a_restart_prints_nothing(
    nats_server_factory: ServerFactory, logging: str
) -> None:
    server = nats_server_factory()
    stage_stream(server.url, "CELLOS", ["cellos.events.>"])
    child = start_child("reconnect", f"nats://127.0.0.1:{server.port}", logging)
    assert child.stdout is not None
    try:
        while "READY" not in (line := child.stdout.readline()):
            assert line, f"the child ended early: {child.communicate()}"
        server.stop()
        with FakePeer(close_without_pong, port=server.port) as peer:
            # Several reconnect attempts that each end without a PONG.
            wait_until(lambda: peer.connections >= 3, 15, "the sink never came back")
            out, err = finish(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert err == ""
    assert "never retrieved" not in out
    assert "Traceback" not in out
