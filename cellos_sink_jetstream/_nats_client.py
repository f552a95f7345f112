"""Every use of nats-py's private names, in one place.

nats-py offers no public hook for what the sink needs on its hot path and at the TLS
handshake, so :class:`SinkClient` overrides or reads a few of its internals. Nothing else
in this package touches a nats-py name that starts with an underscore.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Callable, Optional

import nats.errors
from nats.aio.client import Client

__all__ = [
    "CAN_SKIP_SUBJECT_VALIDATION",
    "ReplyHandler",
    "SinkClient",
    "abort_transport",
    "close_quietly",
]

logger = logging.getLogger("cellos_sink_jetstream")

_CLOSE_TIMEOUT_SECONDS = 2.0
# nats-py 2.16 accepts skip_subject_validation; 2.14 and older reject the argument.
CAN_SKIP_SUBJECT_VALIDATION = (
    "skip_subject_validation" in inspect.signature(Client.connect).parameters
)


#: Takes one message of a direct subscription: its subject, its payload, and the status
#: code NATS put in its header line (``"503"`` for no responders), if any.
ReplyHandler = Callable[[bytes, bytes, Optional[str]], None]


def _inline_status(headers: Optional[bytes]) -> Optional[str]:
    # "NATS/1.0 503\r\n\r\n": a status code follows the version after one space.
    if headers and headers[_STATUS_OFFSET - 1 : _STATUS_OFFSET] == b" ":
        return headers[_STATUS_OFFSET : _STATUS_OFFSET + 3].decode("ascii", "replace")
    return None


_STATUS_OFFSET = len(b"NATS/1.0 ")


class SinkClient(Client):
    """The nats-py client with four changes the sink relies on.

    - It refuses to send CONNECT over plaintext when TLS was asked for: nats-py upgrades
      to TLS only when the server's INFO says ``tls_required``, so a server (or an
      impostor) without TLS would otherwise receive the credentials in clear.
    - :meth:`publish_now` writes a pre-encoded header block as it is, without the
      coroutines of ``publish()``, and :meth:`flush_now` writes a batch out without
      waiting for the flusher task's turn: header encoding, four coroutine calls and a
      loop turn are most of nats-py's own cost per publish, and the loop thread is the
      sink's bottleneck.
    - It hands the messages of :meth:`subscribe_direct` subscriptions (the acks) to a
      plain function, without a queue and a task switch per message.
    - A reconnect whose peer never answers the handshake's PING with PONG is a failed
      attempt, not a half-made connection.
    """

    def __init__(self, require_tls: bool) -> None:
        super().__init__()
        self._cellos_require_tls = require_tls
        # Subscriptions whose messages go straight to a handler, by subscription id.
        self._cellos_handlers: dict[int, ReplyHandler] = {}

    async def subscribe_direct(self, subject: str, handler: ReplyHandler) -> None:
        """Subscribe; each message goes to ``handler(subject, data, status)`` at once.

        Skips nats-py's per-subscription queue, task and ``Msg`` object, which replies
        to our own publishes do not need. The handler runs on the event loop, inside the
        protocol parser: it must be quick, and what it raises is logged and dropped.
        """
        subscription = await self.subscribe(subject)
        self._cellos_handlers[subscription._id] = handler

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Optional[bytes]
    ) -> None:
        handler = self._cellos_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, data, _inline_status(headers))
        except Exception:  # raised into the parser, it would drop the connection
            logger.exception("handling a reply from NATS failed; ignored")

    async def _process_connect_init(self) -> None:
        reconnecting = self.is_reconnecting
        await super()._process_connect_init()
        if reconnecting and not self.is_connected:
            # The peer hung up (or said something else) instead of answering the PING with
            # PONG. nats-py carries on as if connected, starts its tasks, and the reconnect
            # that follows fails one of them with InvalidStateError, which asyncio prints
            # as "Task exception was never retrieved". Make it a failed attempt instead:
            # nats-py then tries again later. (A first connect is judged by connect().)
            for task in (self._reading_task, self._ping_interval_task, self._flusher_task):
                if task is not None:
                    task.cancel()
            if self._transport is not None:
                self._transport.close()  # type: ignore[no-untyped-call]
            raise nats.errors.Error("nats: the server did not answer PING with PONG")

    def _connect_command(self) -> bytes:
        # Called on every (re)connect, once the new transport exists and before CONNECT.
        writer = getattr(self._transport, "_io_writer", None)
        if self._cellos_require_tls and (
            writer is None or writer.get_extra_info("ssl_object") is None
        ):
            raise nats.errors.SecureConnRequiredError()
        _limit_read_size(getattr(writer, "transport", None))
        command: bytes = super()._connect_command()
        return command

    def publish_now(self, subject: str, reply: str, payload: bytes, header_block: bytes) -> None:
        """What ``publish()`` does, for an encoded header block and without a coroutine.

        The same checks and errors and the same write buffer; :meth:`flush_now` writes
        it out, once per batch. One change: nothing is buffered while disconnected (the
        sink connects with ``pending_size=0`` anyway), so a publish then raises
        ``OutboundBufferLimitError`` at once.
        """
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not self.is_connected:
            raise nats.errors.OutboundBufferLimitError
        payload_size = len(payload)
        if payload_size > self._max_payload:
            raise nats.errors.MaxPayloadError
        header_size = len(header_block)
        command = b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
            subject.encode(),
            reply.encode(),
            header_size,
            header_size + payload_size,
            header_block,
            payload,
        )
        self._pending.append(command)
        self._pending_data_size += len(command)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size

    def flush_now(self) -> None:
        """Write out what :meth:`publish_now` buffered.

        At once when the socket keeps up (nothing is waiting in the transport's own
        buffer), which saves the loop turn nats-py's flusher task would take; otherwise
        through that task, which waits for the socket to drain before writing more.
        """
        if not self._pending or not self.is_connected:
            return
        writer = getattr(self._transport, "_io_writer", None)
        socket_transport = getattr(writer, "transport", None)
        flusher = self._flusher_task
        flusher_alive = flusher is not None and not flusher.done()
        if (
            socket_transport is not None and socket_transport.get_write_buffer_size() == 0
        ) or not flusher_alive:
            assert self._transport is not None
            self._transport.writelines(self._pending[:])
            self._pending = []
            self._pending_data_size = 0
            return
        # As nats-py's _flush_pending: one wake-up of the flusher per batch of writes.
        queue = self._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())


async def close_quietly(nc: Client, timeout: float = _CLOSE_TIMEOUT_SECONDS) -> None:
    try:
        # Bounded: nats-py's close() hangs after a failed TLS handshake, and while it
        # flushes into a server that stopped reading.
        await asyncio.wait_for(nc.close(), timeout)
    except asyncio.TimeoutError:
        logger.debug("closing the NATS connection timed out after %gs; aborting it", timeout)
        abort_transport(nc)
    except asyncio.CancelledError:
        abort_transport(nc)
        if _being_cancelled():
            raise
        # Python 3.13's StreamWriter.wait_closed() raises CancelledError when the peer
        # hung up mid-handshake: that is the connection's end, not ours.
        logger.debug("closing the NATS connection: the peer had already hung up")
    except Exception as exc:  # closing must not mask the reason we are closing for
        logger.debug("ignored error while closing the NATS connection: %s", type(exc).__name__)
        abort_transport(nc)


def _being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (always assumed before 3.11)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


#: Most bytes asyncio reads from the socket at once. Its default, 256 KiB, is above
#: glibc's mmap threshold: every read of an ack mapped, shrank and unmapped a fresh
#: buffer (three system calls and a page fault per read, and in a threaded process a
#: TLB flush on every core running one of its threads). 64 KiB comes from the heap and
#: still holds hundreds of acks.
READ_SIZE = 64 * 1024


def _limit_read_size(socket_transport: object) -> None:
    if isinstance(getattr(socket_transport, "max_size", None), int):
        socket_transport.max_size = READ_SIZE  # type: ignore[attr-defined]


def abort_transport(nc: Client) -> None:
    # nats-py offers no abort; its transport wraps an asyncio StreamWriter whose
    # transport can drop the socket at once, unsent data and all.
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()
