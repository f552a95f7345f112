"""The one seam to NATS: the :class:`Publisher` protocol and its nats-py implementation.

Every nats-py error is translated into this library's errors here, at the publish
boundary, and nowhere else.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import re
import ssl
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import nats.errors
from nats.aio.client import Client
from typing_extensions import Protocol, runtime_checkable

from ._config import scrub, secrets_in
from ._errors import (
    ConnectError,
    FailureCause,
    MessageRejectedError,
    NoStreamError,
    PayloadTooLargeError,
    PublishError,
    PublishTimeoutError,
    StreamMismatchError,
)

__all__ = [
    "AckListener",
    "HEADER_CONTENT_TYPE",
    "HEADER_EXPECTED_STREAM",
    "HEADER_MSG_ID",
    "ConnectOptions",
    "EncodedHeaders",
    "HeaderTemplate",
    "NatsPublisher",
    "PubAck",
    "Publisher",
]

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EXPECTED_STREAM = "Nats-Expected-Stream"
HEADER_CONTENT_TYPE = "Content-Type"

# JetStream's error code for "expected stream does not match".
_ERR_STREAM_MISMATCH = 10060
_STATUS_NO_RESPONDERS = "503"
# connect()'s JetStream check: the request, its reply token, and the pseudo status of a
# permissions violation (the server refused to let this account send the request).
_JS_API_INFO = "$JS.API.INFO"
_JS_API_STREAM_INFO = "$JS.API.STREAM.INFO."
_CHECK_REPLY = "connect-check"
_CHECK_REPLY_BYTES = _CHECK_REPLY.encode()
_CHECK_DENIED = "denied"
_CLOSE_TIMEOUT_SECONDS = 2.0
# nats-py 2.16 accepts skip_subject_validation; 2.14 and older reject the argument.
_CAN_SKIP_SUBJECT_VALIDATION = (
    "skip_subject_validation" in inspect.signature(Client.connect).parameters
)
# nats-py's errors for "not written: no usable connection right now", in NATS terms.
_CONNECTION_DOWN: dict[type[Exception], str] = {
    # publish_now raises it whenever the client is not connected (see there).
    nats.errors.OutboundBufferLimitError: "the connection to NATS is down and the client "
    "is reconnecting",
    nats.errors.ConnectionClosedError: "the connection to NATS is closed",
    nats.errors.ConnectionReconnectingError: "the client is reconnecting to NATS",
    nats.errors.StaleConnectionError: "the connection to NATS went stale (the server stopped "
    "answering pings)",
    nats.errors.ConnectionDrainingError: "the connection to NATS is draining before it closes",
}

logger = logging.getLogger("cellos_sink_jetstream")


@dataclass(frozen=True)
class PubAck:
    """JetStream's acknowledgement of one stored message.

    Attributes:
        stream: The stream that stored it.
        seq: Its sequence number in that stream.
        duplicate: True when JetStream had already stored a message with the same
            ``Nats-Msg-Id`` within the stream's duplicate window (nothing new was stored).
    """

    stream: str
    seq: int
    duplicate: bool = False


@runtime_checkable
class Publisher(Protocol):
    """What the sink needs from a JetStream client: publish one message, await its ack.

    Implementations raise this library's :class:`~cellos_sink_jetstream.PublishError`
    subclasses; anything else is treated as a failure of NATS. The sink bounds every call
    with its publish timeout, so an implementation need not.
    """

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        """Publish ``payload`` to ``subject`` with ``headers`` and return JetStream's ack."""
        ...


@dataclass(frozen=True)
class ConnectOptions:
    """How :class:`NatsPublisher` connects. Secrets stay inside ``servers``; never log them."""

    servers: Sequence[str]
    display_url: str
    tls: Optional[ssl.SSLContext] = None
    connect_timeout: float = 5.0
    reconnect_time_wait: float = 0.25
    name: str = "cellos-sink-jetstream"

    @property
    def wants_tls(self) -> bool:
        """Whether every connection must be encrypted before credentials are sent."""
        return self.tls is not None or any(s.startswith("tls://") for s in self.servers)


class EncodedHeaders(dict):  # type: ignore[type-arg]  # dict[str, str] on 3.9 too
    """Message headers that carry their NATS wire encoding, made once by the caller.

    An ordinary mapping to any :class:`Publisher`; :class:`NatsPublisher` writes
    :attr:`wire` as it is instead of encoding the mapping again on the event loop.
    Build them with :class:`HeaderTemplate`.
    """

    __slots__ = ("wire",)

    #: The header block as NATS sends it: ``NATS/1.0\r\n``, one line per header, a blank line.
    wire: bytes


class HeaderTemplate:
    """Fixed headers plus one header whose value changes per message, pre-encoded."""

    def __init__(self, fixed: Mapping[str, str], per_message: str) -> None:
        """Check and encode the fixed part; raise ``ValueError`` for an unsafe header."""
        _check_header(per_message, "x")
        self._fixed = dict(fixed)
        self._per_message = per_message
        self._prefix = f"NATS/1.0\r\n{_header_lines(fixed)}{per_message}: ".encode()

    def fill(self, value: str) -> EncodedHeaders:
        """The headers of one message whose per-message header is ``value``.

        ``value`` is not checked again here, on every publish: the caller guarantees it is
        a valid header value (the sink passes event ids, which the event model checks).
        """
        headers = EncodedHeaders(self._fixed)
        headers[self._per_message] = value
        headers.wire = b"%b%b\r\n\r\n" % (self._prefix, value.encode())
        return headers


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS header block of ``headers``; raise ``ValueError`` for an unsafe header."""
    wire = getattr(headers, "wire", None)
    if isinstance(wire, bytes):
        return wire
    return f"NATS/1.0\r\n{_header_lines(headers)}\r\n".encode()


def _header_lines(headers: Mapping[str, str]) -> str:
    for name, value in headers.items():
        _check_header(name, value)
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def _check_header(name: str, value: str) -> None:
    # What nats-py would refuse (names) or silently rewrite (values: stripped, CR and LF
    # turned into spaces) is refused here, so the bytes sent are the bytes nats-py would
    # send. Anything else, non-ASCII included, is sent as UTF-8, as nats-py does.
    if not _HEADER_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid NATS header name")
    if not value or value != value.strip() or "\r" in value or "\n" in value:
        raise ValueError(f"header {name} cannot carry {value!r}")


_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")  # printable ASCII without space and colon


#: Takes one message of a direct subscription: its subject, its payload, and the status
#: code NATS put in its header line (``"503"`` for no responders), if any.
ReplyHandler = Callable[[bytes, bytes, Optional[str]], None]


def _inline_status(headers: Optional[bytes]) -> Optional[str]:
    # "NATS/1.0 503\r\n\r\n": a status code follows the version after one space.
    if headers and headers[_STATUS_OFFSET - 1 : _STATUS_OFFSET] == b" ":
        return headers[_STATUS_OFFSET : _STATUS_OFFSET + 3].decode("ascii", "replace")
    return None


_STATUS_OFFSET = len(b"NATS/1.0 ")


class _SinkClient(Client):
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


#: Told the outcome of a pipelined send: ``(receiver, ack, None)`` or
#: ``(receiver, None, error)``, on the event loop, once per send.
AckListener = Callable[[Any, Optional[PubAck], Optional[BaseException]], None]


class NatsPublisher:
    """A :class:`Publisher` over one nats-py connection, pipelining publishes.

    Like the Go client's ``PublishAsync``, all acks come back on one wildcard reply
    subscription, so any number of publishes can be in flight without a subscription or
    a timer task each. Publishes are written to the connection in call order, which keeps
    the stream's order equal to the order of calls.

    Besides :meth:`publish`, it offers a callback interface for a pipelining caller:
    :meth:`send_now` writes a message and later hands its outcome, with the caller's own
    ``receiver`` object, to the one listener given to :meth:`listen`. That costs no
    future, task or closure per message.
    """

    def __init__(self, nc: _SinkClient, reply_prefix: str, expected_stream: Optional[str]) -> None:
        """Wrap a connected client; use :meth:`connect` rather than calling this."""
        self._nc = nc
        self._reply_prefix = reply_prefix
        self._reply_prefix_size = len(reply_prefix.encode())
        self._expected_stream = expected_stream
        # Reply token -> (receiver, subject): the subject only for error messages.
        self._pending: dict[int, tuple[Any, str]] = {}
        self._tokens = itertools.count()
        self._listener: AckListener = _refuse_unheard_ack
        self._reconnect_listener: Callable[[], object] = _ignore_reconnect
        self._closing = False
        # JetStream's answer to connect()'s check: (data, status), until connect returns.
        self._check_answer: Optional[asyncio.Future[tuple[bytes, Optional[str]]]] = None

    @classmethod
    async def connect(
        cls, options: ConnectOptions, expected_stream: Optional[str] = None
    ) -> NatsPublisher:
        """Connect within ``options.connect_timeout`` and set up the reply subscription."""
        nc = _SinkClient(options.wants_tls)
        publisher = cls(nc, f"{nc.new_inbox()}.", expected_stream)

        secrets = secrets_in(options.servers)
        last_errors: list[Exception] = []
        # Set once every server refused the initial connection: nothing listens there,
        # and nats-py would keep retrying until connect_timeout.
        refused_everywhere = asyncio.Event()
        refusals = itertools.count(1)
        deadline = asyncio.get_running_loop().time() + options.connect_timeout
        check_subject = (
            _JS_API_INFO if expected_stream is None else f"{_JS_API_STREAM_INFO}{expected_stream}"
        )

        async def on_error(exc: Exception) -> None:
            if _is_permission_denial(exc, check_subject):
                # The account may not ask JetStream's API (publish-only users): the server
                # answered, so it is up; the first emit tells whether JetStream stores.
                publisher._answer_check(_CHECK_DENIED)
                return
            last_errors[:] = [exc]
            if isinstance(exc, ConnectionRefusedError) and next(refusals) >= len(options.servers):
                refused_everywhere.set()
            logger.debug(
                "NATS connection error at %s: %s", options.display_url, _describe(exc, secrets)
            )

        async def on_disconnected() -> None:
            if not publisher._closing:
                logger.info("disconnected from NATS at %s", options.display_url)
            publisher._abandon_in_flight()

        async def on_reconnected() -> None:
            logger.info("reconnected to NATS at %s", options.display_url)
            publisher._reconnect_listener()

        kwargs: dict[str, Any] = {
            "servers": list(options.servers),
            "name": options.name,
            "connect_timeout": max(0.1, min(options.connect_timeout, 2.0)),
            "reconnect_time_wait": options.reconnect_time_wait,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            # No buffering while disconnected: a publish then fails fast (and opens the
            # circuit) instead of waiting to be flushed into a server that may never return.
            "pending_size": 0,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        if _CAN_SKIP_SUBJECT_VALIDATION:
            # Subjects are validated strictly when the template is built and per tenant
            # id, and reply subjects are our own: nats-py's per-publish checks are spent.
            kwargs["skip_subject_validation"] = True
        if options.tls is not None:
            kwargs["tls"] = options.tls
        try:
            await _connect_unless_refused(
                nc.connect(**kwargs), refused_everywhere, options.connect_timeout
            )
        except BaseException as exc:
            publisher._closing = True  # it never connected: no "disconnected" to report
            await _close_quietly(nc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            if refused_everywhere.is_set():
                problem = (
                    "the connection was refused (is the server running, and listening on "
                    "that port?)"
                )
            else:
                cause = last_errors[-1] if last_errors else exc
                reason = (
                    "timed out"
                    if isinstance(cause, asyncio.TimeoutError)
                    else _describe(cause, secrets)
                )
                problem = (
                    f"no connection within {options.connect_timeout:g}s (last error: {reason})"
                )
            logger.info("could not connect to NATS at %s: %s", options.display_url, problem)
            raise ConnectError(
                f"could not connect to NATS at {options.display_url}: {problem}; check that "
                f"the server is up, the URL, the credentials and the TLS settings"
            ) from None
        not_ready = await publisher._check_handshake(
            check_subject, deadline, options.connect_timeout
        )
        if not_ready is not None:
            publisher._closing = True  # a half-made connection: no "disconnected" to report
            await _close_quietly(nc)
            logger.info("could not connect to NATS at %s: %s", options.display_url, not_ready)
            raise ConnectError(f"could not connect to NATS at {options.display_url}: {not_ready}")
        return publisher

    async def _check_handshake(
        self, check_subject: str, deadline: float, timeout: float
    ) -> Optional[str]:
        """What is wrong with the fresh connection, or ``None`` when it is ready.

        Ready means: the server answered the handshake's PING with PONG (nats-py returns
        from ``connect()`` without one when the peer hangs up instead), and JetStream
        answered one API request (account info, or the expected stream's info) in time.
        """
        nc = self._nc
        if not nc.is_connected:
            return (
                "the server did not answer PING with PONG, so the handshake never finished; "
                "check that the URL points at a healthy NATS server"
            )
        loop = asyncio.get_running_loop()
        await nc.subscribe_direct(f"{self._reply_prefix}*", self._on_reply)
        answer: asyncio.Future[tuple[bytes, Optional[str]]] = loop.create_future()
        self._check_answer = answer
        try:
            await nc.publish(check_subject, b"", reply=f"{self._reply_prefix}{_CHECK_REPLY}")
            data, status = await asyncio.wait_for(answer, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return (
                f"no answer from JetStream to {check_subject} within the connect timeout "
                f"({timeout:g}s); check that JetStream is enabled and healthy on the server"
            )
        except nats.errors.Error:
            return (
                f"the connection dropped while waiting for JetStream's answer to "
                f"{check_subject}; check that the server is healthy"
            )
        finally:
            self._check_answer = None
        if status == _STATUS_NO_RESPONDERS:
            return (
                f"JetStream is not enabled on the server (no responders to {check_subject}); "
                f"enable it (nats-server -js, or a jetstream block in its configuration)"
            )
        if status == _CHECK_DENIED:
            logger.debug("this account may not call %s; JetStream was not checked", check_subject)
            return None
        error = _api_error(data)
        if error is not None and error.get("code") == 503:
            return (
                f"JetStream is unavailable (code 503, err_code {error.get('err_code')}: "
                f"{str(error.get('description', ''))[:200]}); enable JetStream for this "
                f"account, or retry once the server is ready"
            )
        if error is not None:
            logger.warning(
                "JetStream answered %s with code %s (%s); publishing will tell whether the "
                "stream is staged",
                check_subject,
                error.get("code"),
                str(error.get("description", ""))[:200],
            )
        return None

    def _answer_check(self, status: str, data: bytes = b"") -> None:
        answer = self._check_answer
        if answer is not None and not answer.done():
            answer.set_result((data, status))

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload`` (bytes of headers plus payload)."""
        return int(self._nc.max_payload)

    async def stream_duplicate_window(self, stream: str, timeout: float) -> Optional[float]:
        """Stream ``stream``'s duplicate window in seconds, ``None`` when unknown."""
        try:
            reply = await self._nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
            body = json.loads(reply.data)
        except (nats.errors.Error, asyncio.TimeoutError, ValueError):
            return None
        config = body.get("config") if isinstance(body, dict) else None
        window = config.get("duplicate_window") if isinstance(config, dict) else None
        # JetStream gives it in nanoseconds.
        return window / 1e9 if isinstance(window, int) and window > 0 else None

    def listen(self, listener: AckListener) -> None:
        """Send the outcomes of :meth:`send_now` to ``listener`` (called on the event loop)."""
        self._listener = listener

    def on_reconnected(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` (on the event loop) each time nats-py has reconnected.

        nats-py calls back once the new connection answered a PING and the subscriptions
        were replayed, so a publish made then can be acknowledged.
        """
        self._reconnect_listener = listener

    def _on_reply(self, reply_subject: bytes, data: bytes, status: Optional[str]) -> None:
        token = reply_subject[self._reply_prefix_size :]
        if token == _CHECK_REPLY_BYTES:
            self._answer_check(status or "", data)
            return
        pending = self._pending.pop(int(token), None) if token.isdigit() else None
        if pending is None:
            return  # a late reply to a publish that was forgotten
        receiver, subject = pending
        try:
            ack = self._parse_ack(subject, data, status)
        except PublishError as exc:
            self._deliver(receiver, None, exc)
        else:
            self._deliver(receiver, ack, None)

    def _deliver(
        self, receiver: Any, ack: Optional[PubAck], error: Optional[BaseException]
    ) -> None:
        # publish() waits on a future of its own; everything else goes to the listener.
        if isinstance(receiver, asyncio.Future):
            if not receiver.done():
                if error is None:
                    receiver.set_result(ack)
                else:
                    receiver.set_exception(error)
        else:
            self._listener(receiver, ack, error)

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        """Write the message; its outcome goes to the listener with ``receiver``.

        Synchronous: the message joins the connection's write buffer, in order, and
        :meth:`flush_writes` writes the buffer out. Returns the reply token, for
        :meth:`forget`. Raises a :class:`PublishError` at once when the message cannot be
        written (the listener then hears nothing).
        """
        header_block = encode_header_block(headers)
        token = next(self._tokens)
        self._pending[token] = (receiver, subject)
        try:
            self._nc.publish_now(subject, f"{self._reply_prefix}{token}", payload, header_block)
        except Exception as exc:
            self._pending.pop(token, None)
            if isinstance(exc, nats.errors.MaxPayloadError):
                raise PayloadTooLargeError(len(payload), self.max_payload) from None
            what = _connection_down(exc)
            if what is not None:
                raise PublishError(
                    f"{what}; the event was not sent. Re-emit it once NATS is back (the "
                    f"circuit breaker fails fast meanwhile) or spill it to a fallback sink",
                    cause=FailureCause.CONNECTION_DOWN,
                ) from None
            raise
        return token

    def flush_writes(self) -> None:
        """Write out the messages :meth:`send_now` buffered; call once per batch."""
        self._nc.flush_now()

    def forget(self, token: int) -> None:
        """Stop waiting for the ack of a :meth:`send_now` (its deadline passed)."""
        self._pending.pop(token, None)

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        """Publish and wait for the ack; raise a :class:`PublishError` subclass otherwise."""
        ack: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        token = self.send_now(subject, payload, headers, ack)
        self.flush_writes()
        try:
            return await ack
        finally:
            self.forget(token)  # a no-op unless the caller gave up waiting

    def _parse_ack(self, subject: str, data: bytes, status: Optional[str]) -> PubAck:
        if status == _STATUS_NO_RESPONDERS:
            raise NoStreamError(
                f"no JetStream stream captures subject {subject!r} (no responders); the "
                f"operator must create a stream whose subjects include it"
            )
        try:
            body = json.loads(data)
        except ValueError:
            raise PublishError(
                f"the reply to a publish on {subject!r} is not a JetStream ack; is a core "
                f"NATS subscriber answering that subject?"
            ) from None
        if not isinstance(body, dict):
            raise PublishError(
                f"the reply to a publish on {subject!r} is not a JetStream ack; is a core "
                f"NATS subscriber answering that subject?"
            )
        error = body.get("error")
        if error is not None:
            return self._raise_api_error(subject, error)
        stream, seq = body.get("stream"), body.get("seq")
        if not isinstance(stream, str) or not isinstance(seq, int):
            raise PublishError(
                f"the reply to a publish on {subject!r} is not a JetStream ack (no stream/seq); "
                f"is a core NATS subscriber answering that subject?"
            )
        if self._expected_stream is not None and stream != self._expected_stream:
            raise StreamMismatchError(
                f"publish on {subject!r} was acknowledged by stream {stream!r}, not the "
                f"configured {self._expected_stream!r}; check the stream subjects",
                description=f"acknowledged by stream {stream[:100]!r}",
            )
        return PubAck(stream, seq, bool(body.get("duplicate", False)))

    def _raise_api_error(self, subject: str, error: Any) -> PubAck:
        # What JetStream says about this message (a 4xx) goes to its caller alone; anything
        # else (503: no leader, storage failing) says JetStream cannot store right now.
        details = error if isinstance(error, dict) else {}
        description = str(details.get("description", "unknown error"))[:200]
        code, err_code = _int_or_none(details.get("code")), _int_or_none(details.get("err_code"))
        refused = (
            f"JetStream refused the publish on {subject!r}: {description} "
            f"(code {code}, err_code {err_code})"
        )
        if err_code == _ERR_STREAM_MISMATCH:
            raise StreamMismatchError(
                f"{refused}; the subject is captured by another stream than the configured "
                f"{self._expected_stream!r}: fix the stream option or the stream's subjects",
                code=code,
                err_code=err_code,
                description=description,
            )
        if code is not None and 400 <= code < 500:
            raise MessageRejectedError(
                f"{refused}; the event was not stored, and sending it again gets the same "
                f"answer: fix the event (or the stream's limits), or dead-letter it",
                code=code,
                err_code=err_code,
                description=description,
            )
        raise PublishError(
            f"{refused}; the event was not stored, re-emit it later",
            cause=FailureCause.JETSTREAM_UNAVAILABLE,
        )

    def _abandon_in_flight(self) -> None:
        # The connection dropped: these acks will never arrive, but the server may have
        # stored the messages before it went away, so the outcome is unknown, not failed.
        pending = list(self._pending.values())
        self._pending.clear()
        for receiver, _subject in pending:
            self._deliver(
                receiver,
                None,
                PublishTimeoutError(
                    "the connection to NATS dropped before the ack arrived; the event may "
                    "have been stored, re-emit it (same id) to be sure",
                    cause=FailureCause.CONNECTION_DOWN,
                ),
            )

    async def close(self) -> None:
        """Close the connection; safe to call more than once.

        Bounded by 2 s; past that, or when the caller cancels it (a server that stopped
        reading, say), the socket is aborted.
        """
        self._closing = True
        self._abandon_in_flight()
        await _close_quietly(self._nc)


def _connection_down(exc: BaseException) -> Optional[str]:
    """What a nats-py "no usable connection" error means, or ``None`` for other errors."""
    for kind, what in _CONNECTION_DOWN.items():
        if isinstance(exc, kind):
            return what
    return None


def _ignore_reconnect() -> None:
    """Nobody asked to hear about reconnections."""


def _refuse_unheard_ack(
    receiver: Any, ack: Optional[PubAck], error: Optional[BaseException]
) -> None:
    raise RuntimeError("NatsPublisher.send_now() was used before listen(); nobody hears the ack")


def _is_permission_denial(exc: Exception, subject: str) -> bool:
    # nats-py hands the server's -ERR line, lower-cased, to the error callback:
    # nats: permissions violation for publish to "$js.api.info"
    text = str(exc)
    return "permissions violation for publish" in text and f'"{subject.lower()}"' in text


def _int_or_none(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _api_error(data: bytes) -> Optional[dict[str, Any]]:
    """The ``error`` object of a JetStream API answer, if it is one."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _describe(exc: BaseException, secrets: Sequence[str]) -> str:
    text = scrub(str(exc), secrets)[:200]
    if type(exc).__module__.startswith("nats"):
        # nats-py's messages say what happened ("nats: unexpected EOF"); its class names
        # mean nothing to the reader.
        return text or "an error in the NATS client"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _connect_unless_refused(
    connecting: Awaitable[None], refused: asyncio.Event, timeout: float
) -> None:
    """Await ``connecting`` for ``timeout`` seconds, giving up at once when ``refused`` is set.

    Raises ``asyncio.TimeoutError`` in both cases; the caller tells them apart by ``refused``.
    """
    attempt = asyncio.ensure_future(connecting)
    refusal = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({attempt, refusal}, timeout=timeout, return_when=FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not attempt.done():
            attempt.cancel()
            # nats-py's connect() ends on cancellation; wait for it so no task is left.
            await asyncio.wait({attempt})
    if attempt.cancelled():
        raise asyncio.TimeoutError
    attempt.result()


async def _close_quietly(nc: Client, timeout: float = _CLOSE_TIMEOUT_SECONDS) -> None:
    try:
        # Bounded: nats-py's close() hangs after a failed TLS handshake, and while it
        # flushes into a server that stopped reading.
        await asyncio.wait_for(nc.close(), timeout)
    except asyncio.TimeoutError:
        logger.debug("closing the NATS connection timed out after %gs; aborting it", timeout)
        _abort_transport(nc)
    except asyncio.CancelledError:
        _abort_transport(nc)
        raise
    except Exception as exc:  # closing must not mask the reason we are closing for
        logger.debug("ignored error while closing the NATS connection: %s", type(exc).__name__)
        _abort_transport(nc)


#: Most bytes asyncio reads from the socket at once. Its default, 256 KiB, is above
#: glibc's mmap threshold: every read of an ack mapped, shrank and unmapped a fresh
#: buffer (three system calls and a page fault per read, and in a threaded process a
#: TLB flush on every core running one of its threads). 64 KiB comes from the heap and
#: still holds hundreds of acks.
_READ_SIZE = 64 * 1024


def _limit_read_size(socket_transport: object) -> None:
    if isinstance(getattr(socket_transport, "max_size", None), int):
        socket_transport.max_size = _READ_SIZE  # type: ignore[attr-defined]


def _abort_transport(nc: Client) -> None:
    # nats-py offers no abort; its transport wraps an asyncio StreamWriter whose
    # transport can drop the socket at once, unsent data and all.
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()
