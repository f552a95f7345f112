"""The sink against a real nats-server with JetStream, started by the fixtures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import nats.errors
import pytest

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    Connected,
    ConnectError,
    FailureCause,
    JetStreamEventSink,
    NoStreamError,
    PayloadTooLargeError,
    PublishError,
    PublishTimeoutError,
    Reconnecting,
    StreamMismatchError,
    with_retry,
)
from cellos_sink_jetstream._publisher import _SILENCE_SECONDS
from tests._nats import TLSFiles, read_stream, stage_stream
from tests._polling import wait_until
from tests._servers import NatsServer, frozen
from tests.conftest import ServerFactory, StagedStream
from tests.test_connect_handshake import FakePeer


def event(n: int, prefix: str = "evt", **kwargs: Any) -> CloudEventV1:
    return CloudEventV1(
        id=f"{prefix}-{n}", source="/supervisor", type="cell.lifecycle", data={"n": n}, **kwargs
    )


def test_eight_threads_every_event_stored_once_in_thread_order(stream: StagedStream) -> None:
    per_thread = 250
    with JetStreamEventSink.connect(
        stream.url, "cellos.events.{tenantId}", stream=stream.name
    ) as sink:

        def producer(thread: int) -> None:
            for n in range(per_thread):
                sink.emit(
                    event(n, prefix=f"t{thread}", extensions={"tenantid": f"tenant{thread % 2}"})
                )

        threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sink.stats().published == 8 * per_thread

    messages = read_stream(stream.url, stream.name)
    assert len(messages) == 8 * per_thread
    order: dict[str, list[int]] = defaultdict(list)
    for msg in messages:
        assert msg.headers is not None
        body = json.loads(msg.data)
        assert msg.headers == {
            "Nats-Msg-Id": body["id"],
            "Content-Type": "application/cloudevents+json",
            "Nats-Expected-Stream": stream.name,
        }
        thread_id, n = body["id"].split("-")
        assert msg.subject == f"cellos.events.tenant{int(thread_id[1:]) % 2}"
        order[thread_id].append(int(n))
        assert CloudEventV1.from_json(msg.data).data == {"n": int(n)}
    assert dict(order.items()) == {f"t{k}": list(range(per_thread)) for k in range(8)}


def test_re_emit_is_deduplicated_by_event_id(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(stream.url, stream.subject("dedup")) as sink:
        first = sink.publish(event(1))
        again = sink.publish(event(1))
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert len(read_stream(stream.url, stream.name)) == 1


def test_ids_with_invisible_characters_are_sent_verbatim(stream: StagedStream) -> None:
    # Valid CloudEvents ids that str.isprintable() rejects must still deduplicate exactly.
    with JetStreamEventSink.connect(stream.url, stream.subject("invisible")) as sink:
        invisible = "zero\u200bwidth\u00a0nbsp"
        first = sink.publish(event(1, prefix=invisible))
        again = sink.publish(event(1, prefix=invisible))
        visible = sink.publish(event(1, prefix="zerowidth nbsp"))
    assert (first.duplicate, again.duplicate, visible.duplicate) == (False, True, False)
    assert again.seq == first.seq
    assert visible.seq == first.seq + 1


def test_server_stop_opens_the_circuit_and_restart_closes_it(stream: StagedStream) -> None:
    server = stream.server
    with JetStreamEventSink.connect(
        stream.url, stream.subject("restart"), publish_timeout=2.0
    ) as sink:
        sink.emit(event(0))
        server.stop()
        with pytest.raises(PublishError):
            sink.emit(event(1))
        assert isinstance(sink.debug_state(), Reconnecting)
        with pytest.raises(CircuitOpenError):
            sink.emit(event(2))
        assert sink.stats().fast_failed == 1
        server.start()
        # The probe runs when its backoff elapses; the client reconnects on its own.
        with_retry(100, lambda: sink.emit(event(3)), retry_on=(PublishError,), max_delay=0.2)
        assert sink.debug_state() == Connected()
        assert sink.stats().breaker_openings == 1
    ids = [json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)]
    assert ids == ["evt-0", "evt-3"]


class FrozenClock:
    """A breaker clock that moves only when told: no probe falls due by itself."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_reconnection_itself_makes_the_next_emit_probe(stream: StagedStream) -> None:
    clock = FrozenClock()
    with JetStreamEventSink.connect(
        stream.url, stream.subject("back"), publish_timeout=2.0, retry_attempts=1, clock=clock
    ) as sink:
        sink.emit(event(0))
        stream.server.kill()
        with pytest.raises(PublishError):
            sink.emit(event(1))
        with pytest.raises(CircuitOpenError) as refused:
            sink.emit(event(2))
        assert refused.value.cause is FailureCause.CONNECTION_DOWN
        assert sink.stats().probes == 0
        stream.server.start()
        # The breaker's clock stands still, so no scheduled probe ever falls due: only
        # the reconnection can make an emit probe.
        wait_until(
            lambda: sink.debug_state() == Reconnecting(0, clock.now),
            15,
            "the reconnection did not make the next probe due",
        )
        sink.emit(event(3))
        assert sink.debug_state() == Connected()
        assert sink.stats().probes == 1
    ids = [json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)]
    assert ids == ["evt-0", "evt-3"]


def test_a_hung_server_that_answers_again_makes_the_next_emit_probe(
    stream: StagedStream,
) -> None:
    # A SIGSTOPped server keeps the connection up: nats-py never reconnects, so without a
    # signal of its own the circuit would wait for its schedule (12.8 s after a 30 s hang).
    clock = FrozenClock()
    with JetStreamEventSink.connect(
        stream.url, stream.subject("thaw"), publish_timeout=0.5, retry_attempts=1, clock=clock
    ) as sink:
        sink.emit(event(0))
        with frozen(stream.server):
            with pytest.raises(PublishTimeoutError):
                sink.emit(event(1))
            with pytest.raises(CircuitOpenError) as refused:
                sink.emit(event(2))
            assert refused.value.cause is FailureCause.TIMEOUT
            # The hang itself, longer than a PING may go unanswered: nothing to wait for
            # but the clock.
            time.sleep(2 * _SILENCE_SECONDS + 0.5)
            assert sink.debug_state() == Reconnecting(0, clock.now + refused.value.retry_after)
        # The breaker's clock stands still: only the server answering again can make an
        # emit probe.
        wait_until(
            lambda: sink.debug_state() == Reconnecting(0, clock.now),
            15,
            "the server answering again did not make the next probe due",
        )
        sink.emit(event(3))
        assert sink.debug_state() == Connected()
        assert sink.stats().probes == 1


def test_a_server_without_jetstream_is_jetstream_unavailable_not_a_missing_stream(
    stream: StagedStream,
) -> None:
    # Restarted on the same port without JetStream, the server answers every publish with
    # "no responders", as it does for a subject no stream captures; its INFO tells them
    # apart. Staging a stream would not help, so "no stream" would send the operator
    # the wrong way.
    clock = FrozenClock()
    with JetStreamEventSink.connect(
        stream.url, stream.subject("nojs"), publish_timeout=2.0, retry_attempts=1, clock=clock
    ) as sink:
        sink.emit(event(0))
        stream.server.kill()
        with pytest.raises(PublishError):
            sink.emit(event(1))  # opens the circuit: the connection is down
        with NatsServer(port=stream.server.port, jetstream=False):
            wait_until(
                lambda: sink.debug_state() == Reconnecting(0, clock.now),
                15,
                "the sink did not reconnect to the server without JetStream",
            )
            with pytest.raises(PublishError) as failed:
                sink.emit(event(2))  # the probe
            assert not isinstance(failed.value, NoStreamError), failed.value
            assert failed.value.cause is FailureCause.JETSTREAM_UNAVAILABLE
            assert "JetStream is not enabled" in str(failed.value)
            with pytest.raises(CircuitOpenError) as refused:
                sink.emit(event(3))
            assert refused.value.cause is FailureCause.JETSTREAM_UNAVAILABLE
            assert "JetStream is unavailable" in str(refused.value)


def test_staging_the_missing_stream_closes_the_circuit_on_the_next_probe(
    stream: StagedStream,
) -> None:
    clock = FrozenClock()
    with JetStreamEventSink.connect(
        stream.url, "late.stream.x", publish_timeout=2.0, clock=clock
    ) as sink:
        with pytest.raises(NoStreamError):
            sink.emit(event(1))
        with pytest.raises(CircuitOpenError) as refused:
            sink.emit(event(2))
        assert refused.value.cause is FailureCause.NO_STREAM
        stage_stream(stream.url, "LATE", ["late.stream.>"])
        clock.now += refused.value.retry_after
        sink.emit(event(3))  # the next probe
        assert sink.debug_state() == Connected()
        assert sink.stats().probes == 1
        assert sink.stats().breaker_openings == 1
    assert [json.loads(m.data)["id"] for m in read_stream(stream.url, "LATE")] == ["evt-3"]


def test_subject_without_stream_fails_with_no_stream_error_quickly(stream: StagedStream) -> None:
    # Quickly: the server's "no responders" answers it; waiting out publish_timeout would
    # raise PublishTimeoutError instead.
    with JetStreamEventSink.connect(stream.url, "nobody.listens.here", publish_timeout=3) as sink:
        with pytest.raises(NoStreamError, match="no JetStream stream captures"):
            sink.emit(event(1))


def test_a_missing_stream_is_named_as_the_cause_of_the_open_circuit(
    stream: StagedStream,
) -> None:
    with JetStreamEventSink.connect(stream.url, "nobody.listens.here", publish_timeout=3) as sink:
        with pytest.raises(NoStreamError) as first:
            sink.emit(event(1))
        assert first.value.cause is FailureCause.NO_STREAM
        with pytest.raises(CircuitOpenError) as refused:
            sink.emit(event(2))
    assert refused.value.cause is FailureCause.NO_STREAM
    assert "no JetStream stream captures the subject" in str(refused.value)
    assert "unreachable" not in str(refused.value)


def _nats_py_class_names() -> set[str]:
    import nats.errors
    import nats.js.errors

    return {
        name
        for module in (nats.errors, nats.js.errors)
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }


def test_a_stopped_server_is_named_as_the_cause_in_nats_terms(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("down"), publish_timeout=2.0, retry_attempts=1
    ) as sink:
        sink.emit(event(0))
        stream.server.stop()
        failures: list[PublishError] = []
        for n in range(1, 10):
            try:
                sink.emit(event(n))
            except CircuitOpenError as exc:
                refused = exc
                break
            except PublishError as exc:
                failures.append(exc)
        else:
            raise AssertionError(f"the circuit never opened: {failures}")
    assert failures, "the first emit after the stop should have failed, not been refused"
    assert refused.cause is FailureCause.CONNECTION_DOWN
    assert "the connection to NATS is down" in str(refused)
    for error in (*failures, refused):
        assert error.cause is FailureCause.CONNECTION_DOWN, error
        message = str(error)
        named = {name for name in _nats_py_class_names() if name in message}
        assert not named, f"{message!r} names nats-py classes {named}"


def test_expected_stream_mismatch_is_an_error(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("x"), stream="SOMETHING_ELSE"
    ) as sink:
        with pytest.raises(StreamMismatchError):
            sink.emit(event(1))
    assert read_stream(stream.url, stream.name) == []


def test_rogue_core_subscriber_is_not_taken_for_jetstream(nats_server: NatsServer) -> None:
    import asyncio

    import nats

    ready = threading.Event()
    stop = threading.Event()

    async def rogue() -> None:
        nc = await nats.connect(nats_server.url)

        async def answer(msg: Any) -> None:
            await msg.respond(b'{"stream":"FAKE","seq":1}')

        await nc.subscribe("rogue.subject", cb=answer)
        await nc.flush()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await nc.close()

    rogue_thread = threading.Thread(target=lambda: asyncio.run(rogue()))
    rogue_thread.start()
    try:
        assert ready.wait(10)
        with JetStreamEventSink.connect(nats_server.url, "rogue.subject", stream="CELLOS") as sink:
            with pytest.raises(StreamMismatchError, match="FAKE"):
                sink.emit(event(1))
    finally:
        stop.set()
        rogue_thread.join()


@contextlib.contextmanager
def rogue_responder(url: str, subject: str, reply: bytes) -> Iterator[None]:
    """A core NATS subscriber on ``subject`` that answers every message with ``reply``."""
    import asyncio

    import nats

    ready = threading.Event()
    stop = threading.Event()

    async def rogue() -> None:
        nc = await nats.connect(url)

        async def answer(msg: Any) -> None:
            await msg.respond(reply)

        await nc.subscribe(subject, cb=answer)
        await nc.flush()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await nc.close()

    rogue_thread = threading.Thread(target=lambda: asyncio.run(rogue()))
    rogue_thread.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        stop.set()
        rogue_thread.join()


@pytest.mark.parametrize("reply", [b"[1]", b"not json", b'{"stream": "S"}'])
def test_a_reply_that_is_no_ack_says_what_may_be_answering(
    nats_server: NatsServer, reply: bytes
) -> None:
    with (
        rogue_responder(nats_server.url, "rogue.subject", reply),
        JetStreamEventSink.connect(nats_server.url, "rogue.subject") as sink,
    ):
        with pytest.raises(PublishError) as refused:
            sink.emit(event(1))
    message = str(refused.value)
    assert "is not a JetStream ack" in message
    assert "is a core NATS subscriber answering that subject?" in message


def test_forged_replies_to_the_sinks_inbox_change_nothing(stream: StagedStream) -> None:
    import asyncio

    import nats

    with JetStreamEventSink.connect(stream.url, stream.subject("forged")) as sink:
        first = sink.publish(event(1))
        publisher: Any = sink._runner.publisher if sink._runner else None
        inbox, client_stats = publisher._reply_prefix, publisher._nc.stats
        received_before = client_stats["in_msgs"]
        forgeries = [("abc", b"{}"), ("999999", b"not json"), ("-1", b"x"), ("\u0663", b"")]

        async def forge() -> None:
            nc = await nats.connect(stream.url)
            for token, body in forgeries:
                await nc.publish(inbox + token, body, headers={"Status": "503"})
            await nc.flush()
            await nc.close()

        asyncio.run(forge())
        second = sink.publish(event(2))
        assert second.seq == first.seq + 1
        # Every forgery reaches the sink's connection, and none changes anything. They
        # come before the second ack as a rule, but once, in a full suite on a loaded
        # machine, only one had been counted when the second publish returned: wait for
        # them rather than assume the order of two connections' messages.
        wait_until(
            lambda: client_stats["in_msgs"] - received_before == len(forgeries) + 1,
            10,
            "the forged replies never reached the sink's connection",
        )
        stats = sink.stats()
        assert (stats.published, stats.failed) == (2, 0)
        assert sink.debug_state() == Connected()


def test_payload_over_max_payload_is_refused_before_sending(
    nats_server_factory: ServerFactory,
) -> None:
    server = nats_server_factory(max_payload=2048)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"])
    with JetStreamEventSink.connect(server.url, "cellos.events.big") as sink:
        with pytest.raises(PayloadTooLargeError) as info:
            sink.emit(CloudEventV1(id="big", source="/s", type="t", data="x" * 4096))
        assert info.value.limit == 2048
        assert sink.debug_state() == Connected()
        sink.emit(event(1))  # the connection is intact
    assert len(read_stream(server.url, "CELLOS")) == 1


def test_unreachable_server_fails_connect_within_the_timeout() -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(ConnectError, match="could not connect"):
        JetStreamEventSink.connect(f"nats://127.0.0.1:{port}", "a.b", connect_timeout=1.0)
    assert time.monotonic() - started < 1.0 + 1.5


@pytest.mark.parametrize("ports", [1, 2])
def test_a_refused_connection_is_reported_as_refused_at_once(
    ports: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cellos_sink_jetstream")
    url = ",".join(f"nats://127.0.0.1:{_closed_port()}" for _ in range(ports))
    # connect_timeout 30 s: nats-py alone retries a refused port until then; the
    # refusal must end connect() long before (15 s is only a generous guard).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        attempt = pool.submit(JetStreamEventSink.connect, url, "a.b", connect_timeout=30.0)
        error = attempt.exception(timeout=15)
    assert isinstance(error, ConnectError)
    assert "the connection was refused" in str(error)
    assert "ConnectionRefusedError" not in str(error)
    messages = [record.getMessage() for record in caplog.records]
    assert any("could not connect to NATS" in m and "refused" in m for m in messages), messages
    assert not any("disconnected from NATS" in m for m in messages), messages


def test_a_rejected_login_is_named_even_when_later_attempts_only_see_a_hang_up() -> None:
    # The real server does this now and then (tests/test_redaction.py, 1 run in 6): it
    # rejects the login, the client's next attempt meets a reset; the rejection must win.
    async def reject_then_hang_up(reader: asyncio.StreamReader, writer: Any) -> None:
        if peer.connections == 1:
            writer.write(b"-ERR 'Authorization Violation'\r\n")
            await writer.drain()
            return
        # Later attempts: reset the connection (SO_LINGER 0 makes close() send RST).
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    with FakePeer(reject_then_hang_up) as peer, pytest.raises(ConnectError) as info:
        JetStreamEventSink.connect(f"nats://u:pw@127.0.0.1:{peer.port}", "a.b", connect_timeout=1.5)
    assert peer.connections >= 2, "the client gave up after one attempt: nothing to prove"
    assert "authorization violation" in str(info.value).lower()


def test_one_refusing_server_of_two_does_not_stop_connect(stream: StagedStream) -> None:
    url = f"nats://127.0.0.1:{_closed_port()},{stream.url}"
    for _ in range(3):  # nats-py shuffles the list: give the refusing one a chance first
        with JetStreamEventSink.connect(url, stream.subject("two"), connect_timeout=10) as sink:
            sink.emit(event(0))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_credentials_work_and_never_show(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = nats_server_factory(user="svc", password="s3cr3t-pass-word")
    stage_stream(server.url, "CELLOS", ["cellos.events.>"])
    with JetStreamEventSink.connect(server.url, "cellos.events.auth") as sink:
        sink.emit(event(1))
        shown = repr(sink) + str(sink)
    assert "s3cr3t-pass-word" not in shown
    assert "***@" in shown
    bad_url = server.url.replace("s3cr3t-pass-word", "wrong-pass-word")
    with pytest.raises(ConnectError) as info:
        JetStreamEventSink.connect(bad_url, "cellos.events.auth", connect_timeout=1.5)
    assert "wrong-pass-word" not in str(info.value)
    assert "s3cr3t-pass-word" not in caplog.text
    assert "wrong-pass-word" not in caplog.text


@pytest.mark.fast_path  # see tox env publicpath
def test_tls_with_private_root_ca(nats_server_factory: ServerFactory, tls_files: TLSFiles) -> None:
    server = nats_server_factory(cert_file=tls_files.server_cert, key_file=tls_files.server_key)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"], tls=tls_files.client_context())
    with JetStreamEventSink.connect_with_root_ca(
        server.url, "cellos.events.tls", tls_files.ca_file
    ) as sink:
        assert sink.publish(event(1)).seq == 1


@pytest.mark.fast_path  # see tox env publicpath
def test_tls_with_the_wrong_ca_fails_clearly(
    nats_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    server = nats_server_factory(cert_file=tls_files.server_cert, key_file=tls_files.server_key)
    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        JetStreamEventSink.connect_with_root_ca(
            server.url, "cellos.events.tls", tls_files.wrong_ca_file, connect_timeout=1.5
        )


def test_tls_certificate_for_another_host_fails(
    nats_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    server = nats_server_factory(
        cert_file=tls_files.other_host_cert, key_file=tls_files.other_host_key
    )
    with pytest.raises(ConnectError):
        JetStreamEventSink.connect_with_root_ca(
            server.url, "cellos.events.tls", tls_files.ca_file, connect_timeout=1.5
        )


def test_tls_requested_against_a_plaintext_server_never_sends_credentials(
    tls_files: TLSFiles,
) -> None:
    """An impostor without TLS must not receive the CONNECT line (which has the password)."""
    received = bytearray()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def impostor() -> None:
        info = (
            b'INFO {"server_id":"x","version":"2.10.0","proto":1,"headers":true,'
            b'"max_payload":1048576,"auth_required":true}\r\n'
        )
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                conn.sendall(info)
                try:
                    while chunk := conn.recv(4096):
                        received.extend(chunk)
                except OSError:
                    pass

    thread = threading.Thread(target=impostor)
    thread.start()
    try:
        for url, ca in [
            (f"tls://svc:top-secret-pw@127.0.0.1:{port}", None),
            (f"nats://svc:top-secret-pw@127.0.0.1:{port}", tls_files.ca_file),
        ]:
            with pytest.raises(ConnectError):
                JetStreamEventSink.connect(
                    url, "a.b", ca_file=str(ca) if ca else None, connect_timeout=1.0, env={}
                )
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert b"top-secret-pw" not in bytes(received)
    assert b"CONNECT" not in bytes(received)


def test_cloudevents_sdk_interop_both_ways(stream: StagedStream) -> None:
    try:  # cloudevents >= 2 moved the classic API under cloudevents.v1
        from cloudevents.v1.http import CloudEvent as SdkEvent
        from cloudevents.v1.http import from_json as sdk_from_json
    except ImportError:  # cloudevents 1.x (Python 3.9)
        from cloudevents.http import CloudEvent as SdkEvent  # type: ignore[no-redef]
        from cloudevents.http import from_json as sdk_from_json  # type: ignore[no-redef]

    sdk_event = SdkEvent(
        {"type": "cell.exited", "source": "/sdk", "id": "sdk-1", "tenantid": "acme"},
        {"exitCode": 0},
    )
    with JetStreamEventSink.connect(stream.url, "cellos.events.{tenantId}") as sink:
        sink.emit(sdk_event)
        sink.emit(event(1, extensions={"tenantid": "acme"}))
    stored = read_stream(stream.url, stream.name)
    assert [m.subject for m in stored] == ["cellos.events.acme"] * 2
    parsed = [sdk_from_json(m.data) for m in stored]
    assert parsed[0]["id"] == "sdk-1"
    assert parsed[0].data == {"exitCode": 0}
    assert parsed[1]["id"] == "evt-1"
    assert parsed[1]["tenantid"] == "acme"
    assert parsed[1].data == {"n": 1}


def test_pipelined_futures_all_resolve_in_order_across_a_restart(stream: StagedStream) -> None:
    count = 3000
    with JetStreamEventSink.connect(
        stream.url, stream.subject("pipelined"), publish_timeout=3.0, max_in_flight=64
    ) as sink:
        futures = []
        for n in range(count):
            if n == count // 2:
                # Some events went through before the kill: wait for the first one's ack
                # rather than hope the loop thread wrote and heard one while this thread
                # queued half of them (under load it had not: no ack before the kill).
                first = futures[0][1]
                assert first is not None
                first.result(10)
                stream.server.kill()
                stream.server.start()
            try:
                futures.append((n, sink.emit_nowait(event(n))))
            except CircuitOpenError:
                futures.append((n, None))
        assert sink.flush(15)
        outcomes: dict[int, Any] = {}
        for n, future in futures:
            assert future is None or future.done(), "every future resolves"
            outcomes[n] = None if future is None or future.exception() else future.result()
        acked = [n for n, ack in outcomes.items() if ack is not None]
        assert acked, "events before the kill went through"
        # Re-emit everything that did not get an ack once the circuit is closed again.
        probe = event(0, prefix="probe")
        with_retry(100, lambda: sink.emit(probe), retry_on=(PublishError,), max_delay=0.2)
        for n, ack in outcomes.items():
            if ack is None:
                # Same id, so a retry stores it once: a slow ack on a loaded machine
                # (PublishTimeoutError) must not fail a test about the futures above.
                with_retry(
                    5, lambda n=n: sink.emit(event(n)), retry_on=(PublishError,), max_delay=0.2
                )
    stored = [json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)]
    assert sorted(stored) == sorted({*stored}), "no duplicates"
    assert set(stored) >= {f"evt-{n}" for n in range(count)}
    acked_seqs = [outcomes[n].seq for n in acked]
    assert acked_seqs == sorted(acked_seqs), "the stream keeps the queue's order"


def test_close_from_eight_threads_against_a_real_server(stream: StagedStream) -> None:
    before = {t.ident for t in threading.enumerate()}
    sink = JetStreamEventSink.connect(stream.url, stream.subject("close"))
    pending = [sink.emit_nowait(event(n)) for n in range(200)]
    barrier = threading.Barrier(8)

    def closer() -> None:
        barrier.wait()
        sink.close(timeout=5)

    closers = [threading.Thread(target=closer) for _ in range(8)]
    for thread in closers:
        thread.start()
    for thread in closers:
        thread.join(10)
    assert not any(thread.is_alive() for thread in closers)
    assert all(future.done() for future in pending)
    assert [t for t in threading.enumerate() if t.ident not in before] == []
    stored = {json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)}
    acked = {f"evt-{n}" for n, f in enumerate(pending) if f.exception() is None}
    assert acked <= stored
    from cellos_sink_jetstream import SinkClosedError

    with pytest.raises(SinkClosedError):
        sink.emit(event(999))


def test_close_while_nats_py_reconnects_leaves_no_task_and_no_socket(
    stream: StagedStream,
) -> None:
    # close() cancels nats-py's reconnect task; before Python 3.12 asyncio.wait_for lets a
    # cancellation go when what it waited for (the new socket, a PONG) arrived in the same
    # loop turn, and the reconnect carried on past close(). One close in 10 to 70 hit
    # that turn: its reader, pinger and flusher tasks were pending and its socket open when
    # the loop closed. So close many sinks, each at a slightly different moment of a
    # reconnect, and look at the loop and the process's descriptors after each.
    reconnect_time_wait = 0.01
    fds_before = len(os.listdir("/proc/self/fd"))
    attempts = 0
    until = time.monotonic() + 6
    while time.monotonic() < until:
        sink = JetStreamEventSink.connect(
            stream.url, stream.subject("closeleak"), reconnect_time_wait=reconnect_time_wait
        )
        runner: Any = sink._runner
        loop, client = runner._loop, runner.publisher._nc
        # Past the connect's own attempt, so that the reconnect connects at once.
        time.sleep(reconnect_time_wait)
        # What nats-py's read loop does when the server hangs up (force_reconnect() is
        # newer than the oldest nats-py supported).
        runner.run_coroutine(client._process_op_err(nats.errors.UnexpectedEOF()), 5)
        time.sleep((attempts % 6) * 0.0001)  # the close lands at a different step each time
        started = time.monotonic()
        sink.close(timeout=5)
        attempts += 1
        assert time.monotonic() - started < 5, "close() kept to its bound"
        assert not runner._thread.is_alive()
        left = [task.get_coro() for task in asyncio.all_tasks(loop)]
        assert left == [], f"close #{attempts} left tasks pending on the closed loop"
        open_fds = len(os.listdir("/proc/self/fd"))
        assert open_fds == fds_before, f"close #{attempts} left {open_fds - fds_before} fds open"
    assert attempts > 20
