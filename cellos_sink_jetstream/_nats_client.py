"""Every use of nats-py's private names, in one place.

nats-py offers no public hook for what the sink needs on its hot path and at the TLS
handshake, so :class:`SinkClient` overrides or reads a few of its internals. Nothing else
in this package touches a nats-py name that starts with an underscore.

A nats-py release may rename any of them. :func:`new_client` therefore checks first that
each one is still there with the expected shape (:func:`private_api_misfit`); when one is
not, it logs one WARNING and returns a :class:`PublicApiClient`, which offers the same
methods built on nats-py's public API only: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import nats.aio.client
import nats.aio.subscription
import nats.aio.transport
import nats.errors
import nats.protocol.parser
from nats.aio.client import Client
from nats.aio.msg import Msg

from ._errors import ConnectError
from ._headers import encode_header_block
from ._reply_parser import DirectHandler, DirectReplyParser

__all__ = [
    "CAN_SKIP_SUBJECT_VALIDATION",
    "FORCE_PUBLIC_API_ENV",
    "NatsClient",
    "PublicApiClient",
    "READ_SIZE",
    "ReplyHandler",
    "SessionFailed",
    "SinkClient",
    "WriteErrorHandler",
    "abort_transport",
    "close_quietly",
    "new_client",
    "open_session",
    "private_api_misfit",
    "server_info",
]

logger = logging.getLogger("cellos_sink_jetstream")

_CLOSE_TIMEOUT_SECONDS = 2.0
# How long SinkClient.close() waits for the tasks it cancelled before cancelling again.
_CLOSE_SWEEP_SECONDS = 0.05
# nats-py 2.16 accepts skip_subject_validation; 2.14 and older reject the argument.
CAN_SKIP_SUBJECT_VALIDATION = (
    "skip_subject_validation" in inspect.signature(Client.connect).parameters
)


#: Takes one message of a direct subscription: its subject, its payload, and the status
#: code NATS put in its header line (``"503"`` for no responders), if any.
ReplyHandler = DirectHandler


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
      plain function, without a queue and a task switch per message, and reads their
      frames itself (:class:`DirectReplyParser`) rather than through nats-py's parser.
    - A reconnect whose peer never answers the handshake's PING with PONG is a failed
      attempt, not a half-made connection; after a first connect like that, none of
      nats-py's connection tasks runs.
    """

    def __init__(self, require_tls: bool) -> None:
        super().__init__()
        self._cellos_require_tls = require_tls
        # Subscriptions whose messages go straight to a handler, by subscription id.
        self._cellos_handlers: dict[int, ReplyHandler] = {}
        # Set when close() starts: from then on no reconnect may finish (see close()).
        self._cellos_closing = False
        self._ps = DirectReplyParser(self, self._cellos_handlers, self._cellos_count_in)

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
        # A message the direct parser left to nats-py's (one with headers: a status).
        self._cellos_count_in(1, len(data))
        try:
            handler(subject, data, _inline_status(headers))
        except Exception:  # raised into the parser, it would drop the connection
            logger.exception("handling a reply from NATS failed; ignored")

    def _cellos_count_in(self, messages: int, payload_bytes: int) -> None:
        # nats-py's own counts, which its parser keeps for the messages it delivers.
        self.stats["in_msgs"] += messages
        self.stats["in_bytes"] += payload_bytes

    async def close(self) -> None:
        """Close, and make it stick when a reconnect was under way.

        nats-py's close() cancels its reconnect task, but before Python 3.12
        ``asyncio.wait_for`` drops a cancellation that arrives in the same loop turn as
        what it waited for (the new socket, the server's INFO or PONG): the reconnect then
        carries on past close(), opens a socket, starts its reader, pinger and flusher
        tasks and sets the client CONNECTED again (and once close() shuts that socket, the
        reader starts yet another reconnect). So close until the client stays closed, and
        cancel what is left of the connection's tasks until none runs; then drop the
        socket that such a reconnect may have left.
        """
        self._cellos_closing = True
        current = asyncio.current_task()
        swept = False
        while True:
            await super().close()
            left = [
                task
                for task in self._cellos_connection_tasks()
                if task is not current and not task.done()
            ]
            if not left and self.is_closed:
                break
            swept = True
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=_CLOSE_SWEEP_SECONDS)
        if swept:
            abort_transport(self)
            await asyncio.sleep(0)  # the transport closes its socket on the next loop turn

    def _cellos_connection_tasks(self) -> list[asyncio.Task[None]]:
        # The reconnect task's name is left out of the fit check (see _attempt_reconnect).
        tasks = (
            getattr(self, "_reconnection_task", None),
            self._reading_task,
            self._ping_interval_task,
            self._flusher_task,
        )
        return [task for task in tasks if isinstance(task, asyncio.Task)]

    async def _process_connect_init(self) -> None:
        if self._cellos_closing:
            # A reconnect that outlived close()'s cancellation (see close()) has just
            # opened a socket: close it, and end the reconnect as its cancellation would.
            if self._transport is not None:
                self._transport.close()  # type: ignore[no-untyped-call]
            raise asyncio.CancelledError
        reconnecting = self.is_reconnecting
        await super()._process_connect_init()
        if self.is_connected:
            return
        # The peer hung up (or said something else) instead of answering the PING with
        # PONG. nats-py carries on as if connected and starts its tasks; stop them before
        # they first run. Its read loop would otherwise spin on the closed socket without
        # ever yielding in nats-py releases that check for EOF only once connected (2.9,
        # the oldest supported, among them): the loop thread wedged for good.
        for task in (self._reading_task, self._ping_interval_task, self._flusher_task):
            if task is not None:
                task.cancel()
        if reconnecting:
            # The reconnect that would follow fails one of those tasks with
            # InvalidStateError, which asyncio prints as "Task exception was never
            # retrieved". Make it a failed attempt instead: nats-py tries again later.
            # (A first connect returns, and is judged by connect().)
            if self._transport is not None:
                self._transport.close()  # type: ignore[no-untyped-call]
            raise nats.errors.Error("nats: the server did not answer PING with PONG")

    async def _attempt_reconnect(self) -> None:
        # Not in the fit check: were it renamed, only this quiet would be lost, which is
        # not worth the public path (slower, no TLS); tests/test_nats_client.py notices.
        try:
            await super()._attempt_reconnect()
        except asyncio.InvalidStateError as exc:
            # nats-py keeps one reconnect future on the client. When the connection drops
            # again while a reconnect finishes (a peer that resets after PONG), the newer
            # reconnect task replaces the future, the cancelled older one resolves it, and
            # the newer one fails resolving it again as its very last step, which asyncio
            # prints as "Task exception was never retrieved". Nothing is left undone then.
            # Raised from anywhere else, it is not that and stays visible.
            frame = exc.__traceback__
            while frame is not None and frame.tb_next is not None:
                frame = frame.tb_next
            if frame is None or frame.tb_frame.f_code.co_name != "_attempt_reconnect":
                raise
            logger.debug("nats-py resolved its reconnect future twice; ignored")

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

    def publish_now(
        self, subject: str, reply: str, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """What ``publish()`` does, without a coroutine and with pre-encoded headers.

        Raises ``ValueError`` for a header nats-py would refuse or rewrite.

        The same checks and errors and the same write buffer; :meth:`flush_now` writes
        it out, once per batch. One change: nothing is buffered while disconnected (the
        sink connects with ``pending_size=0`` anyway), so a publish then raises
        ``OutboundBufferLimitError`` at once.
        """
        header_block = getattr(headers, "wire", None)  # pre-encoded by the sink
        if type(header_block) is not bytes:
            header_block = encode_header_block(headers)
        # One read of nats-py's status rather than its three properties, a Python call
        # each, on the loop thread, for every event; they tell the other states apart.
        if self._status != Client.CONNECTED:
            _refuse_unless_connected(self)
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
    """Drop the socket at once, unsent data and all (a no-op on the public-API path)."""
    if not isinstance(nc, SinkClient):
        return
    # nats-py offers no abort; its transport wraps an asyncio StreamWriter whose
    # transport can drop the socket at once, unsent data and all.
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()


def server_info(nc: Client) -> Mapping[str, Any]:
    """The server's INFO (sent again on every reconnect), or ``{}`` when it is unknown.

    nats-py keeps it in a private attribute and offers no public read. It is read on both
    paths and left out of the fit check on purpose: were it renamed, only the diagnosis
    "JetStream is not enabled" would be lost (an error would say "no stream" instead), not
    worth the slower path without TLS; tests/test_nats_client.py notices a rename.
    """
    info = getattr(nc, "_server_info", None)
    return info if isinstance(info, dict) else {}


#: A private test hook, not an option: set to ``1``, it makes :func:`private_api_misfit`
#: fail, so that the test suite can prove the public-API path against a real server
#: (tox env ``publicpath``). Read nowhere else.
FORCE_PUBLIC_API_ENV = "CELLOS_SINK_FORCE_PUBLIC_NATS_API"


def _shape_of_nats_py() -> Optional[str]:
    """The first private name :class:`SinkClient` relies on that is missing or changed."""
    methods = [
        ("Client._process_msg", True, ["sid", "subject", "reply", "data", "headers"]),
        ("Client._process_connect_init", True, []),
        ("Client._connect_command", False, []),
    ]
    for name, is_coroutine, expected in methods:
        method = getattr(Client, name.split(".")[1], None)
        if (
            method is None
            or inspect.iscoroutinefunction(method) != is_coroutine
            or _parameters(method) != expected
        ):
            return name
    client = Client()
    attributes: list[tuple[str, Union[type, tuple[type, ...]]]] = [
        ("_status", int),
        ("_pending", list),
        ("_pending_data_size", int),
        ("_max_payload", int),
        ("_flusher_task", (type(None), asyncio.Task)),
        ("_flush_queue", (type(None), asyncio.Queue)),
        ("_reading_task", (type(None), asyncio.Task)),
        ("_ping_interval_task", (type(None), asyncio.Task)),
        ("_transport", (type(None), nats.aio.transport.Transport)),
        ("_ps", nats.protocol.parser.Parser),
    ]
    for attribute, kinds in attributes:
        if not isinstance(getattr(client, attribute, _MISSING), kinds):
            return f"Client.{attribute}"
    parser_misfit = _parser_misfit(client._ps)
    if parser_misfit is not None:
        return parser_misfit
    if not callable(getattr(nats.aio.transport.Transport, "writelines", None)):
        return "Transport.writelines"
    if not hasattr(nats.aio.transport.TcpTransport(), "_io_writer"):  # type: ignore[no-untyped-call]
        return "TcpTransport._io_writer"
    if getattr(nats.aio.subscription.Subscription(client, id=7), "_id", None) != 7:
        return "Subscription._id"
    return None


def _parameters(function: Any) -> Optional[list[str]]:
    """A method's parameter names after ``self``, or ``None`` if it has no signature."""
    try:
        return list(inspect.signature(function).parameters)[1:]
    except (TypeError, ValueError):
        return None


def _parser_misfit(parser: nats.protocol.parser.Parser) -> Optional[str]:
    """What :class:`DirectReplyParser` needs of nats-py's parser that it lacks, if anything."""
    # It takes frames only between two of nats-py's, where nats-py's parser waits for a
    # control line with nothing or a partial frame in its bytearray buffer.
    waiting = getattr(nats.protocol.parser, "AWAITING_CONTROL_LINE", _MISSING)
    if not isinstance(waiting, int) or getattr(parser, "state", _MISSING) != waiting:
        return "parser.AWAITING_CONTROL_LINE"
    if not isinstance(getattr(parser, "buf", _MISSING), bytearray):
        return "Parser.buf"
    parse = nats.protocol.parser.Parser.parse
    if not inspect.iscoroutinefunction(parse) or _parameters(parse) != ["data"]:
        return "Parser.parse"
    return None


_MISSING = object()
_shape_lock = threading.Lock()
_shape: list[Optional[str]] = []  # the check's result, once it ran
_warned: list[str] = []  # the misfits already logged (one WARNING per process)


def private_api_misfit() -> Optional[str]:
    """The private nats-py name the fast path needs that this nats-py lacks, or ``None``."""
    if os.environ.get(FORCE_PUBLIC_API_ENV) == "1":
        return f"(none: the fit check was forced to fail by {FORCE_PUBLIC_API_ENV}=1)"
    with _shape_lock:
        if not _shape:
            try:
                _shape.append(_shape_of_nats_py())
            except Exception as exc:  # a constructor changed shape: that is a misfit too
                _shape.append(f"nats-py's internals ({type(exc).__name__} while checking)")
        return _shape[0]


def nats_py_version() -> str:
    """The installed nats-py's version."""
    return str(getattr(nats.aio.client, "__version__", "unknown"))


#: Told a message the public-API path could not write: its reply subject, the error.
WriteErrorHandler = Callable[[str, BaseException], None]


class PublicApiClient(Client):
    """:class:`SinkClient`'s methods on nats-py's public API only, for when it does not fit.

    Publishes are handed to ``publish()`` in call order by one writer task; a message that
    cannot be written then is reported to ``on_write_error`` rather than raised. There is
    no TLS guard here: :func:`new_client` refuses TLS on this path.
    """

    def __init__(self, on_write_error: WriteErrorHandler) -> None:
        super().__init__()
        self._cellos_on_write_error = on_write_error
        self._cellos_outbox: list[tuple[str, str, bytes, dict[str, str]]] = []
        self._cellos_writer: Optional[asyncio.Task[None]] = None

    async def subscribe_direct(self, subject: str, handler: ReplyHandler) -> None:
        """Subscribe; each message goes to ``handler(subject, data, status)``."""

        async def deliver(msg: Msg) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            try:
                handler(msg.subject.encode(), msg.data, status)
            except Exception:
                logger.exception("handling a reply from NATS failed; ignored")

        await self.subscribe(subject, cb=deliver)

    def publish_now(
        self, subject: str, reply: str, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """Queue the message for the writer task, raising what ``publish()`` would at once."""
        encode_header_block(headers)  # the same ValueError as on the fast path
        _refuse_unless_connected(self)
        if len(payload) > self.max_payload:
            raise nats.errors.MaxPayloadError
        self._cellos_outbox.append((subject, reply, payload, dict(headers)))

    def flush_now(self) -> None:
        """Start the writer task unless it is running (it takes what was queued since)."""
        writer = self._cellos_writer
        if self._cellos_outbox and (writer is None or writer.done()):
            self._cellos_writer = asyncio.get_running_loop().create_task(self._cellos_write())

    async def _cellos_write(self) -> None:
        while self._cellos_outbox:
            batch, self._cellos_outbox = self._cellos_outbox, []
            for subject, reply, payload, headers in batch:
                try:
                    await self.publish(subject, payload, reply=reply, headers=headers)
                except Exception as exc:
                    self._cellos_on_write_error(reply, exc)


def _refuse_unless_connected(client: Client) -> None:
    """Raise what nats-py's ``publish()`` raises when the client cannot send now."""
    if client.is_closed:
        raise nats.errors.ConnectionClosedError
    if client.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not client.is_connected:
        raise nats.errors.OutboundBufferLimitError


#: What :func:`new_client` returns.
NatsClient = Union[SinkClient, PublicApiClient]


def new_client(require_tls: bool, on_write_error: WriteErrorHandler) -> NatsClient:
    """A :class:`SinkClient` when this nats-py fits it, else a :class:`PublicApiClient`.

    Raises :class:`ConnectError` when TLS is required but the client cannot guarantee
    it: without the private hook nothing stops nats-py from sending CONNECT (and the
    credentials) in clear to a server that does not offer TLS.
    """
    misfit = private_api_misfit()
    if misfit is None:
        return SinkClient(require_tls)
    if misfit not in _warned:
        _warned.append(misfit)
        logger.warning(
            "nats-py %s lacks %s, which the sink's fast path relies on; publishing through "
            "nats-py's public API instead (slower; TLS is refused on that path)",
            nats_py_version(),
            misfit,
        )
    if require_tls:
        raise ConnectError(
            f"refusing to connect over TLS: nats-py {nats_py_version()} lacks {misfit}, "
            f"without which the sink cannot make sure the credentials are never sent "
            f"before TLS is up; install a nats-py version this release supports"
        )
    return PublicApiClient(on_write_error)


async def open_session(
    servers: Sequence[str],
    *,
    tls: Optional[ssl.SSLContext],
    require_tls: bool,
    connect_timeout: float,
    name: str,
) -> Client:
    """Connect once, without reconnects, for a short session (the CLI's commands).

    The same client as the sink's (:func:`new_client`: the fit check, the TLS guard).
    Raises :class:`ConnectError` when TLS cannot be guaranteed, and
    :class:`SessionFailed` (after closing the client) when the connect failed.
    """
    errors: list[BaseException] = []

    async def remember_error(exc: Exception) -> None:
        errors.append(exc)

    client = new_client(require_tls, _no_publishes)
    options: dict[str, Any] = {
        "servers": list(servers),
        "name": name,
        "connect_timeout": max(0.1, min(connect_timeout, 2.0)),
        "allow_reconnect": False,
        # Each server is tried twice, then nats-py gives up with NoServersError.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "error_cb": remember_error,
    }
    if tls is not None:
        options["tls"] = tls
    try:
        await asyncio.wait_for(client.connect(**options), connect_timeout)
    except (asyncio.CancelledError, KeyboardInterrupt):
        await close_quietly(client)
        raise
    except Exception as exc:
        await close_quietly(client)
        raise SessionFailed(errors, errors[-1] if errors else exc) from None
    return client


class SessionFailed(Exception):
    """:func:`open_session` could not connect: every error nats-py reported, and the last."""

    def __init__(self, errors: list[BaseException], last: BaseException) -> None:
        super().__init__(str(last))
        self.errors = errors
        self.last = last


def _no_publishes(reply: str, exc: BaseException) -> None:
    """Sessions never use the client's pipelined publishes."""
