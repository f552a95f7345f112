"""The one exception hierarchy of ``cellos_sink_jetstream``.

Every error the library raises derives from :class:`SinkError`::

    SinkError
    ├── ConfigError(ValueError)            bad argument or environment variable
    ├── InvalidEventError(ValueError)      the event cannot be written as CloudEvents JSON
    │   └── PayloadTooLargeError           the serialised event exceeds the server's max_payload
    ├── InvalidSubjectError(ValueError)    bad subject template or tenant id
    ├── ConnectError(ConnectionError)      could not connect to NATS / JetStream
    ├── SinkClosedError                    the sink was closed
    ├── ReentrantEmitError(RuntimeError)   a blocking call from the sink's own loop thread
    ├── BackpressureError                  queue / in-flight limit full for longer than allowed
    ├── SpoolError(OSError)                the local spool cannot durably keep an event
    │   ├── SpoolFullError                 the spool reached its max_bytes
    │   └── SpoolLockedError               another process has the spool directory open
    ├── PublishError                       the event was not (known to be) stored
    │   ├── CircuitOpenError               fail-fast: the circuit is open (`cause`, `retry_after`)
    │   ├── PublishTimeoutError(TimeoutError)  no ack in time: the event MAY still be stored
    │   ├── NoStreamError                  no JetStream stream captures the subject
    │   └── MessageRejectedError           JetStream refused this message (4xx: `code`,
    │       │                              `err_code`, `description`); never moves the breaker
    │       └── StreamMismatchError        the stream is not the configured one
    ├── NatsServerError(RuntimeError)      CLI only: the local nats-server of `dev-server`
    │                                      or `demo` did not start or become ready
    └── CliError                           CLI only: a command failed (``exit_code``;
                                           defined in ``_cli/_exit_status.py``)

The two CLI-only errors are not exported: the command line shows their one-line message
and exits with their status; a program using the library never sees them.

Errors of the caller's own making (``ConfigError``, ``InvalidEventError``,
``InvalidSubjectError``) also derive from :class:`ValueError`, so code that already
catches built-ins keeps working. Messages say what happened and what to do, and never
contain a password, token or key.

A :class:`PublishError` that says NATS is unavailable carries its :class:`FailureCause`
in :attr:`PublishError.cause`; :class:`CircuitOpenError` carries the cause of the failure
that last moved the breaker.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Optional

__all__ = [
    "BackpressureError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectError",
    "FailureCause",
    "InvalidEventError",
    "InvalidSubjectError",
    "MessageRejectedError",
    "NatsServerError",
    "NoStreamError",
    "PayloadTooLargeError",
    "PublishError",
    "PublishTimeoutError",
    "ReentrantEmitError",
    "SinkClosedError",
    "SinkError",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "StreamMismatchError",
]


class FailureCause(str, enum.Enum):
    """Why NATS could not store an event: the category of a failure that moves the breaker.

    A ``str`` enum, so it compares equal to its value (``cause == "no_stream"``) and
    prints well in logs and metrics labels.
    """

    #: The connection to NATS is down (refused, dropped, or nats-py is reconnecting).
    CONNECTION_DOWN = "connection_down"
    #: The server is reachable but no JetStream stream captures the subject.
    NO_STREAM = "no_stream"
    #: JetStream answered that it cannot store events now (503, not ready, no leader),
    #: or the reply was not an acknowledgement.
    JETSTREAM_UNAVAILABLE = "jetstream_unavailable"
    #: No acknowledgement arrived within the publish timeout.
    TIMEOUT = "timeout"

    @property
    def description(self) -> str:
        """The cause as a phrase for messages, e.g. ``"the connection to NATS is down"``."""
        return _CAUSE_DESCRIPTIONS[self]

    def __str__(self) -> str:
        return self.value


_CAUSE_DESCRIPTIONS = {
    FailureCause.CONNECTION_DOWN: "the connection to NATS is down",
    FailureCause.NO_STREAM: "no JetStream stream captures the subject",
    FailureCause.JETSTREAM_UNAVAILABLE: "JetStream is unavailable",
    FailureCause.TIMEOUT: "JetStream did not acknowledge in time",
}

# What to do about each cause, for the message of CircuitOpenError.
_CAUSE_ADVICE = {
    FailureCause.CONNECTION_DOWN: "the circuit closes once NATS accepts connections again",
    FailureCause.NO_STREAM: (
        "stage a stream whose subjects include it (cellos-jetstream check shows how); the "
        "circuit closes on the next probe after that"
    ),
    FailureCause.JETSTREAM_UNAVAILABLE: "the circuit closes once JetStream stores events again",
    FailureCause.TIMEOUT: "the circuit closes once JetStream acknowledges in time again",
}


def format_seconds(seconds: float) -> str:
    """A duration for messages: ``"0.10 s"``, ``"2.5 s"``, ``"51 s"``, ``"3 min"``."""
    if seconds < 1.0:
        return f"{seconds:.2f} s"
    if seconds < 10.0:
        return f"{seconds:.1f} s"
    if seconds < 120.0:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


class SinkError(Exception):
    """Base class of every error raised by ``cellos_sink_jetstream``."""


class ConfigError(SinkError, ValueError):
    """A constructor argument or environment variable has an invalid value."""


#: ``InvalidEventError.attribute`` for the event as a whole (``_event.EVENT_ATTRIBUTE``).
_WHOLE_EVENT = "(event)"


class InvalidEventError(SinkError, ValueError):
    """An event attribute or its data cannot be written as CloudEvents JSON.

    Raised in the caller's thread, before anything is sent; the breaker does not move.
    """

    def __init__(self, attribute: str, problem: str) -> None:
        super().__init__(self._describe(attribute, problem))
        #: Name of the offending attribute (``"data"``, ``"time"``, an extension name, ...),
        #: or ``"(event)"`` when the problem is the event as a whole (not JSON, not an object).
        self.attribute = attribute

    @staticmethod
    def _describe(attribute: str, problem: str) -> str:
        if attribute == _WHOLE_EVENT:
            return f"invalid CloudEvent: {problem}"
        return f"invalid CloudEvent attribute {attribute!r}: {problem}"


class PayloadTooLargeError(InvalidEventError):
    """The serialised event is larger than the server accepts (its ``max_payload``).

    ``attribute`` is ``"data"``, the part to shrink; the message speaks of the event's size.
    """

    @staticmethod
    def _describe(attribute: str, problem: str) -> str:
        return f"CloudEvent too large: {problem}"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "data",
            f"serialised with its headers it is {size} bytes, over the server's max_payload "
            f"of {limit} bytes; shrink the data or raise max_payload on the server",
        )
        #: Size in bytes of the payload plus headers that was refused.
        self.size = size
        #: The server's ``max_payload`` in bytes.
        self.limit = limit


class InvalidSubjectError(SinkError, ValueError):
    """A subject template or the tenant id resolved from an event is not a safe NATS subject.

    Raised before anything is sent; the breaker does not move.
    """


class ConnectError(SinkError, ConnectionError):
    """Connecting to NATS (or reaching JetStream) failed."""


class SinkClosedError(SinkError):
    """The sink is closed (or closed while the event was waiting); create a new one."""


class ReentrantEmitError(SinkError, RuntimeError):
    """A blocking call was made from the sink's own background loop thread.

    ``emit()``, ``publish()``, ``emit_nowait()``, ``flush()`` and ``duplicate_window()``
    raise it there (an ``on_transition`` callback, a future's done-callback, a logging
    handler): waiting would deadlock the loop that has to deliver the events.
    """


class BackpressureError(SinkError):
    """The queue or the in-flight limit stayed full for longer than the caller's timeout."""


class PublishError(SinkError):
    """JetStream did not confirm that the event was stored.

    Args:
        message: What happened and what to do.
        cause: The failure's category when it says NATS is unavailable; ``None`` (the
            default) when it concerns this event only.
    """

    # A class-level default: subclasses with a fixed cause set it here, and errors
    # raised without one need no attribute of their own.
    _cause: Optional[FailureCause] = None

    def __init__(self, message: str, *, cause: Optional[FailureCause] = None) -> None:
        super().__init__(message)
        if cause is not None:
            self._cause = cause

    @property
    def cause(self) -> Optional[FailureCause]:
        """The failure's category (:class:`FailureCause`), or ``None`` when it has none."""
        return self._cause

    #: ``True`` when JetStream refused this very message for good (too large for the
    #: stream, a rejected header): sending it again cannot succeed, and it says nothing
    #: about whether NATS is up.
    permanent = False


class CircuitOpenError(PublishError):
    """Fast failure: the breaker is open because publishing to NATS failed.

    Nothing was sent. :attr:`cause` says why the circuit is open; retry after
    :attr:`retry_after` seconds, or hand the event to a fallback (a dead-letter file, for
    example).
    """

    # No Python-level __init__ and a message formatted only when shown: this error is
    # raised on the fast-fail path, whose cost is a few hundred nanoseconds.
    args: tuple[int, float, FailureCause]

    if TYPE_CHECKING:

        def __init__(self, attempt: int, retry_after: float, cause: FailureCause) -> None: ...

    else:  # the C-level BaseException.__init__ does the work at run time
        __init__ = Exception.__init__

    @property
    def attempt(self) -> int:
        """How many probes have failed since the circuit opened."""
        return self.args[0]

    @property
    def retry_after(self) -> float:
        """Seconds until the next probe is allowed (0.0 when a probe is due or running)."""
        return self.args[1]

    @property
    def cause(self) -> FailureCause:
        """Why the circuit is open: the category of the failure that last moved it."""
        return self.args[2]

    def __str__(self) -> str:
        cause = self.cause
        retry_after = self.retry_after
        when = (
            f"next probe in {format_seconds(retry_after)}"
            if retry_after > 0
            else "a probe is due or running"
        )
        probes = f"; {self.attempt} probe(s) failed" if self.attempt else ""
        return (
            f"circuit open: {cause.description}{probes}; the event was not sent. {when}: "
            f"retry then, or spill it to a fallback sink; {_CAUSE_ADVICE[cause]}"
        )


class PublishTimeoutError(PublishError, TimeoutError):
    """No acknowledgement arrived in time: the outcome is unknown.

    The event may still have been stored. Re-emitting the same event (same ``id``) within
    the stream's duplicate window is safe: JetStream deduplicates it by ``Nats-Msg-Id``.
    Its :attr:`cause` is ``TIMEOUT``, or ``CONNECTION_DOWN`` when the connection dropped
    before the ack.
    """

    _cause = FailureCause.TIMEOUT


class NoStreamError(PublishError):
    """No JetStream stream captures the subject (the server answered "no responders")."""

    _cause = FailureCause.NO_STREAM


class MessageRejectedError(PublishError):
    """JetStream refused this very message (a 4xx API error): it was not stored.

    Too large for the stream's ``max_msg_size``, a header the stream rejects (a wrong
    expected stream, say), or any other 4xx answer about the message. It concerns this
    event only: it is not retried (the same message gets the same answer), and it never
    moves the breaker, since JetStream answered. Fix the event or the stream, or hand the
    event to a dead-letter store.

    Args:
        message: What happened and what to do; it names the server's code and description.
        code: The HTTP-like status JetStream answered (``400``), when there was one.
        err_code: JetStream's own error number (``10054``: message too large), if any.
        description: JetStream's description of the problem.
    """

    permanent = True

    def __init__(
        self,
        message: str,
        *,
        code: Optional[int] = None,
        err_code: Optional[int] = None,
        description: str = "",
    ) -> None:
        super().__init__(message)
        #: The status JetStream answered (``400``), or ``None`` when it gave none.
        self.code = code
        #: JetStream's error number (``10054``, ``10060``, ...), or ``None``.
        self.err_code = err_code
        #: JetStream's description of the problem (at most 200 characters).
        self.description = description


class StreamMismatchError(MessageRejectedError):
    """The stream that captures the subject is not the configured one.

    JetStream refused the message for its ``Nats-Expected-Stream`` header (``err_code``
    10060), or an acknowledgement named another stream (``code`` is then ``None``: no
    refusal, but not the stream asked for). Like every :class:`MessageRejectedError` it
    never moves the breaker: NATS answered; the configuration is at fault.
    """


class NatsServerError(SinkError, RuntimeError):
    """A local ``nats-server`` subprocess could not be started, or was not ready in time.

    Raised by the CLI's ``dev-server`` and ``demo``; the message carries the end of the
    server's log.
    """


class SpoolError(SinkError, OSError):
    """The local spool could not durably keep an event, or cannot be used at all.

    Disk full, read-only, an I/O error, a corrupt or newer-schema file. Raised by
    :meth:`SpoolingEventSink.emit` only when the event is *not* durably stored: the spool
    never reports durable what is not.
    """


class SpoolFullError(SpoolError):
    """The spool holds ``max_bytes`` already; the event was not stored (never dropped silently)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the spool is full: {size} bytes in use, the limit is {limit} bytes; the event was "
            f"not stored. Bring NATS back (the spool drains by itself) or raise max_bytes"
        )
        #: Bytes in use (plus the refused events) when the limit was hit.
        self.size = size
        #: The spool's ``max_bytes``.
        self.limit = limit


class SpoolLockedError(SpoolError):
    """Another :class:`SpoolingEventSink` (in this or another process) has the directory open."""

    def __init__(self, path: str, pid: Optional[int]) -> None:
        holder = f"process {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(
            f"the spool directory {path} is in use by {holder}; one process per spool "
            f"directory: stop that process or give this one its own directory"
        )
        #: The spool directory.
        self.path = path
        #: Process id of the lock holder, as it wrote it into the lock file.
        self.pid = pid
