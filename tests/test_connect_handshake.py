"""``connect()`` returns a sink only after a finished handshake and an answer from JetStream.

Peers that stop half-way are fakes on a loopback socket (an asyncio server in a thread);
everything else is a real nats-server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Awaitable, Iterator
from typing import Callable

import pytest

from cellos_sink_jetstream import CloudEventV1, Connected, ConnectError, JetStreamEventSink
from cellos_sink_jetstream._publisher import _connect_unless_refused
from tests._nats import read_stream, stage_stream
from tests.conftest import ServerFactory

INFO = (
    b'INFO {"server_id":"FAKE","version":"2.10.0","proto":1,"headers":true,'
    b'"max_payload":1048576}\r\n'
)

#: Reads what the client sent up to its first PING, then acts.
PeerScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakePeer:
    """An asyncio server on 127.0.0.1 that runs ``script`` for every connection."""

    def __init__(self, script: PeerScript, port: int = 0) -> None:
        self._script = script
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event
        self.port = port
        self.connections = 0
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            writer.write(INFO)
            await writer.drain()
            await reader.readuntil(b"PING\r\n")  # the client's CONNECT, then PING
            await self._script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> FakePeer:
        self._thread.start()
        assert self._started.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        self._loop.close()


async def close_without_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hang up instead of answering PING."""


async def pong_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer PING with PONG, then read (and never answer) whatever comes."""
    writer.write(b"PONG\r\n")
    await writer.drain()
    while await reader.read(4096):
        pass


async def pong_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer PING with PONG, then reset the connection (TCP RST) before answering more."""
    writer.write(b"PONG\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.fixture
def peer_without_pong() -> Iterator[FakePeer]:
    with FakePeer(close_without_pong) as peer:
        yield peer


@pytest.fixture
def silent_peer() -> Iterator[FakePeer]:
    with FakePeer(pong_then_silence) as peer:
        yield peer


def event(n: int) -> CloudEventV1:
    return CloudEventV1(id=f"evt-{n}", source="/supervisor", type="cell.lifecycle", data={"n": n})


def test_a_peer_that_hangs_up_instead_of_pong_fails_connect(peer_without_pong: FakePeer) -> None:
    with pytest.raises(ConnectError, match="PONG") as info:
        JetStreamEventSink.connect(
            f"nats://127.0.0.1:{peer_without_pong.port}", "a.b", connect_timeout=1.0, env={}
        )
    assert "could not connect" in str(info.value)
    assert peer_without_pong.connections >= 1


def test_a_peer_that_answers_pong_but_nothing_else_fails_connect(silent_peer: FakePeer) -> None:
    with pytest.raises(ConnectError, match="no answer from JetStream") as info:
        JetStreamEventSink.connect(
            f"nats://127.0.0.1:{silent_peer.port}", "a.b", connect_timeout=1.0, env={}
        )
    assert "$JS.API.INFO" in str(info.value)


def test_a_peer_that_answers_pong_but_nothing_else_fails_connect_with_a_stream(
    silent_peer: FakePeer,
) -> None:
    with pytest.raises(ConnectError, match=r"\$JS\.API\.STREAM\.INFO\.CELLOS"):
        JetStreamEventSink.connect(
            f"nats://127.0.0.1:{silent_peer.port}",
            "a.b",
            stream="CELLOS",
            connect_timeout=1.0,
            env={},
        )


def test_a_server_without_jetstream_fails_connect(nats_server_factory: ServerFactory) -> None:
    server = nats_server_factory(jetstream=False)
    with pytest.raises(ConnectError, match="JetStream is not enabled") as info:
        JetStreamEventSink.connect(server.url, "cellos.events.x", connect_timeout=2.0, env={})
    assert "no responders" in str(info.value)


def test_an_account_without_jetstream_fails_connect_with_503(
    nats_server_factory: ServerFactory,
) -> None:
    server = nats_server_factory(
        extra_config="""
accounts {
  JS { jetstream: enabled, users: [ {user: "js", password: "js-pw"} ] }
  PLAIN { users: [ {user: "plain", password: "plain-pw"} ] }
}
"""
    )
    url = f"nats://plain:plain-pw@127.0.0.1:{server.port}"
    with pytest.raises(ConnectError, match="503") as info:
        JetStreamEventSink.connect(url, "cellos.events.x", connect_timeout=2.0, env={})
    assert "plain-pw" not in str(info.value)


PUBLISH_ONLY_USERS = """
authorization {
  users = [
    {user: "admin", password: "admin-pw"}
    {user: "pub", password: "pub-pw", permissions: {publish: ["cellos.events.>"]}}
  ]
}
"""


@pytest.mark.parametrize("stream", [None, "CELLOS"])
def test_a_publish_only_user_connects_and_emits(
    nats_server_factory: ServerFactory, stream: str | None
) -> None:
    server = nats_server_factory(extra_config=PUBLISH_ONLY_USERS)
    admin = f"nats://admin:admin-pw@127.0.0.1:{server.port}"
    stage_stream(admin, "CELLOS", ["cellos.events.>"])
    url = f"nats://pub:pub-pw@127.0.0.1:{server.port}"
    with JetStreamEventSink.connect(
        url, "cellos.events.pub", stream=stream, connect_timeout=2.0, env={}
    ) as sink:
        assert sink.debug_state() == Connected()
        assert sink.publish(event(1)).seq == 1
    assert len(read_stream(admin, "CELLOS")) == 1


def test_connect_to_a_missing_expected_stream_still_succeeds(
    nats_server_factory: ServerFactory,
) -> None:
    """JetStream answered (404): it is up; the operator may stage the stream later."""
    server = nats_server_factory()
    with JetStreamEventSink.connect(
        server.url, "cellos.events.late", stream="CELLOS", connect_timeout=2.0, env={}
    ) as sink:
        stage_stream(server.url, "CELLOS", ["cellos.events.>"])
        assert sink.publish(event(1)).stream == "CELLOS"


def test_a_connect_attempt_that_swallows_a_cancellation_is_cancelled_again() -> None:
    # Python <= 3.11's asyncio.wait_for (inside nats-py's transport connect) returns the
    # inner outcome instead of raising CancelledError when both land at once: nats-py then
    # retries a refused connect forever, and close() of a sink still connecting in the
    # background left its thread running.
    swallowed = []

    async def stubborn_connect() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.append(True)  # as that race does: retry instead of ending
        await asyncio.sleep(3600)

    async def attempt() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await _connect_unless_refused(stubborn_connect(), asyncio.Event(), 0.01)

    async def bounded() -> None:
        await asyncio.wait_for(attempt(), 10.0)

    asyncio.run(bounded())
    assert swallowed == [True]


def test_closing_a_sink_whose_connect_waits_for_jetstream_closes_the_connection() -> None:
    # close() cancels a background connect; cancelled while it waited for JetStream's
    # answer, the connect left its connection open, to the garbage collector (seen as
    # "unclosed transport" warnings of the CLI's spool replay, which closes at once).
    asked = threading.Event()
    hung_up = threading.Event()

    async def pong_then_wait_for_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"PONG\r\n")
        await writer.drain()
        while True:
            data = await reader.read(4096)
            if not data:
                break
            if b"$JS.API.INFO" in data:
                asked.set()  # never answered
        hung_up.set()

    with FakePeer(pong_then_wait_for_hang_up) as peer:
        sink = JetStreamEventSink.connect(
            f"nats://127.0.0.1:{peer.port}", "a.b", connect_timeout=30.0, env={}, wait=False
        )
        try:
            assert asked.wait(10), "the connect never asked JetStream"
        finally:
            sink.close(timeout=5.0)
        assert hung_up.wait(5), "the connection stayed open after close()"
