"""The nats-py client subclass: its write path without a server (when a batch goes out),
and its read size against a real one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, PublishError, with_retry
from cellos_sink_jetstream._nats_client import READ_SIZE, SinkClient
from cellos_sink_jetstream._reply_parser import DirectReplyParser
from tests._nats import read_stream
from tests.conftest import StagedStream

HEADERS = {"Nats-Msg-Id": "e"}


class FakeSocketTransport:
    def __init__(self, buffered: int) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeNatsTransport:
    """Stands in for nats-py's TCP transport: records what is written."""

    def __init__(self, buffered: int) -> None:
        self._io_writer: Any = type("Writer", (), {})()
        self._io_writer.transport = FakeSocketTransport(buffered)
        self.written: list[bytes] = []

    def writelines(self, payload: list[bytes]) -> None:
        self.written.extend(payload)


async def client_with(buffered: int, flusher_alive: bool) -> tuple[SinkClient, FakeNatsTransport]:
    client = SinkClient(require_tls=False)
    client._status = Client.CONNECTED
    transport = FakeNatsTransport(buffered)
    client._transport = transport  # type: ignore[assignment]
    client._flush_queue = asyncio.Queue()
    if flusher_alive:
        # A flusher that is alive and idle: a task that waits forever.
        client._flusher_task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    return client, transport


def test_a_batch_is_written_at_once_while_the_socket_keeps_up() -> None:
    async def main() -> None:
        client, transport = await client_with(buffered=0, flusher_alive=True)
        for n in range(3):
            client.publish_now("a.b", f"r.{n}", b"x", HEADERS)
        assert transport.written == []  # publish_now only buffers
        client.flush_now()
        assert [c.split(b" ")[2] for c in transport.written] == [b"r.0", b"r.1", b"r.2"]
        assert (client._pending, client._pending_data_size) == ([], 0)
        assert client._flush_queue is not None
        assert client._flush_queue.empty()
        client.flush_now()  # nothing buffered: nothing written
        assert len(transport.written) == 3
        assert client._flusher_task is not None
        client._flusher_task.cancel()

    asyncio.run(main())


def test_a_backed_up_socket_leaves_the_batch_to_nats_pys_flusher() -> None:
    async def main() -> None:
        client, transport = await client_with(buffered=70_000, flusher_alive=True)
        client.publish_now("a.b", "r.0", b"x", HEADERS)
        client.flush_now()
        client.publish_now("a.b", "r.1", b"x", HEADERS)
        client.flush_now()
        assert transport.written == []
        assert len(client._pending) == 2  # in order, for the flusher
        assert client._flush_queue is not None
        assert client._flush_queue.qsize() == 1
        assert client._flusher_task is not None
        client._flusher_task.cancel()

    asyncio.run(main())


def test_without_a_flusher_the_batch_is_written_at_once() -> None:
    async def main() -> None:
        client, transport = await client_with(buffered=70_000, flusher_alive=False)
        client.publish_now("a.b", "r.0", b"x", HEADERS)
        client.flush_now()
        assert len(transport.written) == 1
        assert client._pending == []

    asyncio.run(main())


# -- the read size, against a real server -----------------------------------------------


def restart_and_emit_once(stream: StagedStream, sink: JetStreamEventSink) -> None:
    """Restart the server and emit one event, retried until the sink has reconnected."""
    stream.server.restart()
    with_retry(
        100,
        lambda: sink.emit(CloudEventV1.create("t", "/after-restart")),
        retry_on=(PublishError,),
        max_delay=0.2,
    )


def _socket_transport(sink: Any) -> Any:
    client = sink._runner.publisher._nc
    return client._transport._io_writer.transport


@pytest.mark.fast_path  # see tox env publicpath
def test_the_connection_reads_at_most_64_kib_at_once_after_every_connect(
    stream: StagedStream,
) -> None:
    # asyncio's default (256 KiB) made every read of an ack map and unmap a fresh buffer.
    with JetStreamEventSink.connect(
        stream.url, stream.subject("readsize"), publish_timeout=2.0
    ) as sink:
        first = _socket_transport(sink)
        assert first.max_size == READ_SIZE == 64 * 1024
        sink.emit(CloudEventV1.create("t", "/bench", {"n": 1}))
        restart_and_emit_once(stream, sink)
        second = _socket_transport(sink)
        assert second is not first  # a new connection, limited too
        assert second.max_size == READ_SIZE
    assert len(read_stream(stream.url, stream.name)) == 2


@pytest.mark.fast_path  # see tox env publicpath
def test_acks_are_read_past_nats_pys_parser_before_and_after_a_restart(
    stream: StagedStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every ack of a pipelined burst reaches the sink through DirectReplyParser, none
    # through nats-py's parser (its _process_msg), also on the connection a restart makes.
    by_nats_py: list[int] = []
    by_fast_reader: list[int] = []
    stock_process_msg = SinkClient._process_msg
    stock_read = DirectReplyParser._read_direct_frames

    async def process_msg(self: SinkClient, sid: int, *args: Any) -> None:
        by_nats_py.append(sid)
        await stock_process_msg(self, sid, *args)

    def read(self: DirectReplyParser, data: bytes) -> tuple[int, bool]:
        before = self.nc.stats["in_msgs"]
        outcome = stock_read(self, data)
        by_fast_reader.append(self.nc.stats["in_msgs"] - before)
        return outcome

    monkeypatch.setattr(SinkClient, "_process_msg", process_msg)
    monkeypatch.setattr(DirectReplyParser, "_read_direct_frames", read)
    with JetStreamEventSink.connect(
        stream.url, stream.subject("parser"), publish_timeout=2.0
    ) as sink:
        direct_sids = set(sink._runner.publisher._nc._cellos_handlers)  # type: ignore[union-attr]
        burst = [sink.emit_nowait(CloudEventV1.create("t", "/p", {"n": n})) for n in range(300)]
        assert all(future.result(5).seq > 0 for future in burst)
        restart_and_emit_once(stream, sink)
        sink.emit(CloudEventV1.create("t", "/p"))
    assert sum(by_fast_reader) >= 302
    assert not direct_sids & set(by_nats_py)
    assert len(read_stream(stream.url, stream.name)) == 302
