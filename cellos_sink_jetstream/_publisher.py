"""The nats-py implementation of the seam: :class:`NatsPublisher`.

Every nats-py error is translated into this library's errors here, at the publish
boundary, and nowhere else. nats-py's private names are used only through
:mod:`._nats_client`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import ssl
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Optional

import nats.errors

from ._config import scrub, secrets_in, tls_required
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
from ._nats_client import (
    CAN_SKIP_SUBJECT_VALIDATION,
    NatsClient,
    SinkClient,
    close_quietly,
    new_client,
    server_info,
)
from ._seam import AckListener, PubAck

__all__ = ["ConnectOptions", "NatsPublisher"]

# JetStream's error code for "expected stream does not match".
_ERR_STREAM_MISMATCH = 10060
_STATUS_NO_RESPONDERS = "503"
# The ack nats-server writes for a stored message, byte for byte (it formats it itself,
# not through a JSON encoder: note the space in '"duplicate": true'). Read with one match
# instead of json.loads, a fifth of the loop thread's time per pipelined event; anything
# else (an error, a domain, fields of newer servers, escapes) goes through json.loads.
_PLAIN_ACK = re.compile(
    rb'\{"stream":"([^"\\\x00-\x1f]{1,255})","seq":(0|[1-9][0-9]{0,19})(,"duplicate": ?true)?\}'
)
# connect()'s JetStream check: the request, its reply token, and the pseudo status of a
# permissions violation (the server refused to let this account send the request).
_JS_API_INFO = "$JS.API.INFO"
_JS_API_STREAM_INFO = "$JS.API.STREAM.INFO."
_CHECK_REPLY = "connect-check"
_CHECK_REPLY_BYTES = _CHECK_REPLY.encode()
_CHECK_DENIED = "denied"
# Connection errors that only say the socket went away; a connect error names an earlier,
# more telling one when there is one.
_TRANSPORT_HICCUPS = (
    ConnectionResetError,
    BrokenPipeError,
    asyncio.TimeoutError,
    nats.errors.StaleConnectionError,  # UnexpectedEOF included
    nats.errors.ConnectionClosedError,
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
        return tls_required(self.servers, self.tls)


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

    def __init__(self, nc: NatsClient, reply_prefix: str, expected_stream: Optional[str]) -> None:
        """Wrap a connected client; use :meth:`connect` rather than calling this."""
        self._nc = nc
        self._reply_prefix = reply_prefix
        self._reply_prefix_size = len(reply_prefix.encode())
        self._expected_stream = expected_stream
        self._expected_bytes = b"" if expected_stream is None else expected_stream.encode()
        # Reply token -> (receiver, subject): the subject only for error messages.
        self._pending: dict[int, tuple[Any, str]] = {}
        self._tokens = itertools.count()
        self._listener: AckListener = _refuse_unheard_ack
        self._reconnect_listener: Callable[[], object] = _ignore_reconnect
        self._closing = False
        # Pings the server after an ack that never came (see _watch_for_answers).
        self._watch: Optional[asyncio.Task[None]] = None
        # JetStream's answer to connect()'s check: (data, status), until connect returns.
        self._check_answer: Optional[asyncio.Future[tuple[bytes, Optional[str]]]] = None

    @classmethod
    async def connect(
        cls, options: ConnectOptions, expected_stream: Optional[str] = None
    ) -> NatsPublisher:
        """Connect within ``options.connect_timeout`` and set up the reply subscription."""
        created: list[NatsPublisher] = []

        def write_failed(reply: str, exc: BaseException) -> None:
            created[0]._write_failed(reply, exc)

        nc = new_client(options.wants_tls, write_failed)
        publisher = cls(nc, f"{nc.new_inbox()}.", expected_stream)
        created.append(publisher)

        secrets = secrets_in(options.servers)
        last_errors: list[Exception] = []
        # The last error that says more than "the socket went away" (the server's -ERR,
        # a TLS failure): a rejected login is followed by a reset on the next attempt.
        telling_errors: list[Exception] = []
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
            if not isinstance(exc, _TRANSPORT_HICCUPS):
                telling_errors[:] = [exc]
            if isinstance(exc, ConnectionRefusedError) and next(refusals) >= len(options.servers):
                refused_everywhere.set()
            logger.debug(
                "NATS connection error at %s: %s", options.display_url, _describe(exc, secrets)
            )

        async def on_disconnected() -> None:
            if not publisher._closing:
                logger.info("disconnected from NATS at %s", options.display_url)
            publisher._abandon_in_flight()
            publisher._stop_watching()

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
        if CAN_SKIP_SUBJECT_VALIDATION:
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
            await publisher.close()  # it never connected: no "disconnected" to report
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            if refused_everywhere.is_set():
                problem = (
                    "the connection was refused (is the server running, and listening on "
                    "that port?)"
                )
            else:
                earlier = telling_errors or last_errors
                cause = earlier[-1] if earlier else exc
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
        not_ready: Optional[str] = "the JetStream check did not finish"
        try:
            not_ready = await publisher._check_handshake(
                check_subject, deadline, options.connect_timeout
            )
        finally:
            if not_ready is not None:
                # Not ready, failed, or cancelled (the sink closed while connecting in the
                # background): close the half-made connection rather than leave its socket
                # to the garbage collector.
                await publisher.close()
        if not_ready is not None:
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
        if status is None and self._expected_stream is not None:
            # Nearly every reply: the configured stream's ack in nats-server's plain form,
            # read here without the general path's calls (one per event on the loop thread).
            match = _PLAIN_ACK.fullmatch(data)
            if match is not None and match[1] == self._expected_bytes:
                ack = PubAck(self._expected_stream, int(match[2]), match[3] is not None)
                self._deliver(receiver, ack, None)
                return
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
        token = next(self._tokens)
        self._pending[token] = (receiver, subject)
        try:
            self._nc.publish_now(subject, f"{self._reply_prefix}{token}", payload, headers)
        except Exception as exc:
            self._pending.pop(token, None)
            raise self._write_error(exc, len(payload)) from None
        return token

    def _write_error(self, exc: Exception, payload_size: int) -> Exception:
        """The error to raise for a nats-py error raised while writing a message."""
        if isinstance(exc, nats.errors.MaxPayloadError):
            return PayloadTooLargeError(payload_size, self.max_payload)
        what = _connection_down(exc)
        if what is not None:
            return PublishError(
                f"{what}; the event was not sent. Re-emit it once NATS is back (the "
                f"circuit breaker fails fast meanwhile) or spill it to a fallback sink",
                cause=FailureCause.CONNECTION_DOWN,
            )
        return exc

    def _write_failed(self, reply: str, exc: BaseException) -> None:
        # The public-API path writes after send_now returned: its errors arrive here.
        token = reply[len(self._reply_prefix) :]
        pending = self._pending.pop(int(token), None) if token.isdigit() else None
        if pending is not None:
            receiver, _subject = pending
            error = self._write_error(exc, 0) if isinstance(exc, Exception) else exc
            self._deliver(receiver, None, error)

    @property
    def fast_path(self) -> bool:
        """Whether publishes take the fast path over nats-py's internals (see _nats_client)."""
        return isinstance(self._nc, SinkClient)

    def flush_writes(self) -> None:
        """Write out the messages :meth:`send_now` buffered; call once per batch."""
        self._nc.flush_now()

    def forget(self, token: int) -> None:
        """Stop waiting for the ack of a :meth:`send_now` (its deadline passed)."""
        if self._pending.pop(token, None) is not None:
            self._watch_after_silence()

    def _watch_after_silence(self) -> None:
        # An ack never came. If the server itself hangs (SIGSTOP, a stalled VM) the
        # connection stays up, so nats-py never reconnects and never tells us when it
        # answers again: ping it until it does.
        if self._closing or self._watch is not None or not self._nc.is_connected:
            return
        self._watch = asyncio.get_running_loop().create_task(self._watch_for_answers())

    async def _watch_for_answers(self) -> None:
        """Tell the reconnect listener when a server that stopped answering PINGs answers.

        A server that answers the PING within :data:`_SILENCE_SECONDS` was not hung
        (JetStream alone was slow): nothing is said, the circuit keeps its schedule.
        """
        # One PING, never cancelled while the connection lives: nats-py pairs PONGs with
        # its waiting futures in order, and a PONG for a cancelled one (flush(timeout)
        # cancels it) raises inside its read loop and drops the rest of what was read.
        ping = asyncio.ensure_future(self._nc.flush(timeout=_PING_PATIENCE_SECONDS))
        try:
            done, _ = await asyncio.wait({ping}, timeout=_SILENCE_SECONDS)
            silent = not done
            await ping
        except Exception:  # the connection dropped: reconnecting tells instead
            return
        finally:
            self._watch = None
        if silent and not self._closing:
            logger.info("NATS answers PINGs again after a silence")
            self._reconnect_listener()

    def _stop_watching(self) -> None:
        # Only once the connection is gone (dropped, or closed): its PONG can no longer
        # arrive for the future this cancels; a reconnection starts a fresh PONG queue.
        if self._watch is not None:
            self._watch.cancel()

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
            if not self._server_has_jetstream():
                # The same "no responders" as for a missing stream, but staging one would
                # not help: the server (say, restarted with another configuration) has
                # no JetStream at all.
                raise PublishError(
                    f"JetStream is not enabled on the NATS server (no responders on "
                    f"{subject!r}); the event was not stored. Enable JetStream on the server "
                    f"(nats-server -js, or a jetstream block in its configuration), then "
                    f"re-emit it",
                    cause=FailureCause.JETSTREAM_UNAVAILABLE,
                )
            raise NoStreamError(
                f"no JetStream stream captures subject {subject!r} (no responders); the "
                f"operator must create a stream whose subjects include it"
            )
        plain = _read_plain_ack(data)
        if plain is not None:
            stream, seq, duplicate = plain
        else:
            stream, seq, duplicate = self._read_ack(subject, data)
        if self._expected_stream is not None and stream != self._expected_stream:
            raise StreamMismatchError(
                f"publish on {subject!r} was acknowledged by stream {stream!r}, not the "
                f"configured {self._expected_stream!r}; check the stream subjects",
                description=f"acknowledged by stream {stream[:100]!r}",
            )
        return PubAck(stream, seq, duplicate)

    def _read_ack(self, subject: str, data: bytes) -> tuple[str, int, bool]:
        """``(stream, seq, duplicate)`` of any JSON reply; raises when it is no ack."""
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
            self._raise_api_error(subject, error)
        stream, seq = body.get("stream"), body.get("seq")
        if not isinstance(stream, str) or not isinstance(seq, int):
            raise PublishError(
                f"the reply to a publish on {subject!r} is not a JetStream ack (no stream/seq); "
                f"is a core NATS subscriber answering that subject?"
            )
        return stream, seq, bool(body.get("duplicate", False))

    def _server_has_jetstream(self) -> bool:
        # The server's INFO (sent again on every reconnect) carries "jetstream": true only
        # when JetStream is enabled. Without an INFO to read, assume it is.
        info = server_info(self._nc)
        return not info or bool(info.get("jetstream"))

    def _raise_api_error(self, subject: str, error: Any) -> NoReturn:
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
        await close_quietly(self._nc)
        self._stop_watching()


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


#: How long a PING may go unanswered before the server counts as silent (hung).
_SILENCE_SECONDS = 1.0
#: How long the watch's PING waits for its PONG (the connection dropping ends it sooner).
_PING_PATIENCE_SECONDS = 24 * 3600

#: How often a connect attempt that survived its cancellation is cancelled again.
_RECANCEL_SECONDS = 0.05


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
        # nats-py's connect() ends on cancellation; wait for it so no task is left. Cancel
        # again until it does: up to Python 3.11, asyncio.wait_for (in its transport's
        # connect) swallows a cancellation that lands as the socket attempt fails, and
        # nats-py then retries a refused server forever.
        while not attempt.done():
            attempt.cancel()
            await asyncio.wait({attempt}, timeout=_RECANCEL_SECONDS)
    if attempt.cancelled():
        raise asyncio.TimeoutError
    attempt.result()


def _read_plain_ack(data: bytes) -> Optional[tuple[str, int, bool]]:
    """``(stream, seq, duplicate)`` of an ack in nats-server's own plain form, else ``None``.

    ``None`` sends the reply through ``json.loads``, which reads every form (and refuses
    what is no ack); for the plain form both give the same answer (tests/test_publisher_ack.py).
    ``NatsPublisher._on_reply`` reads an ack of the configured stream, nearly every one,
    with the same expression before it gets here.
    """
    match = _PLAIN_ACK.fullmatch(data)
    if match is None:
        return None
    try:
        stream = match[1].decode()
    except UnicodeDecodeError:
        return None
    return stream, int(match[2]), match[3] is not None
