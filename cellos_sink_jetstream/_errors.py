"""The one exception hierarchy of ``cellos_sink_jetstream``.

Every error the library raises derives from :class:`SinkError`::

    SinkError
    ├── ConfigError(ValueError)            bad argument or environment variable
    ├── InvalidEventError(ValueError)      the event cannot be written as CloudEvents JSON
    │   └── PayloadTooLargeError           the serialised event exceeds the server's max_payload
    ├── InvalidSubjectError(ValueError)    bad subject template or tenant id
    ├── ConnectError(ConnectionError)      could not connect to NATS / JetStream
    ├── SinkClosedError                    the sink was closed
    ├── ReentrantEmitError(RuntimeError)   emit() called from the sink's own loop thread
    ├── BackpressureError                  queue / in-flight limit full for longer than allowed
    └── PublishError                       the event was not (known to be) stored
        ├── CircuitOpenError               fail-fast: NATS is down, retry after `retry_after`
        ├── PublishTimeoutError(TimeoutError)  no ack in time: the event MAY still be stored
        ├── NoStreamError                  no JetStream stream captures the subject
        └── StreamMismatchError            the ack came from another stream than configured

Errors of the caller's own making (``ConfigError``, ``InvalidEventError``,
``InvalidSubjectError``) also derive from :class:`ValueError`, so code that already
catches built-ins keeps working. Messages say what happened and what to do, and never
contain a password, token or key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "BackpressureError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectError",
    "InvalidEventError",
    "InvalidSubjectError",
    "NoStreamError",
    "PayloadTooLargeError",
    "PublishError",
    "PublishTimeoutError",
    "ReentrantEmitError",
    "SinkClosedError",
    "SinkError",
    "StreamMismatchError",
]


class SinkError(Exception):
    """Base class of every error raised by ``cellos_sink_jetstream``."""


class ConfigError(SinkError, ValueError):
    """A constructor argument or environment variable has an invalid value."""


class InvalidEventError(SinkError, ValueError):
    """An event attribute or its data cannot be written as CloudEvents JSON.

    Raised in the caller's thread, before anything is sent; the breaker does not move.
    """

    def __init__(self, attribute: str, problem: str) -> None:
        super().__init__(f"invalid CloudEvent attribute {attribute!r}: {problem}")
        #: Name of the offending attribute (``"data"``, ``"time"``, an extension name, ...).
        self.attribute = attribute


class PayloadTooLargeError(InvalidEventError):
    """The serialised event is larger than the server accepts (its ``max_payload``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "data",
            f"the serialised event is {size} bytes, over the server's max_payload of "
            f"{limit} bytes; shrink the data or raise max_payload on the server",
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
    """``emit()`` was called from the sink's own background loop thread.

    Blocking there would deadlock the loop that has to deliver the event.
    """


class BackpressureError(SinkError):
    """The queue or the in-flight limit stayed full for longer than the caller's timeout."""


class PublishError(SinkError):
    """JetStream did not confirm that the event was stored."""


class CircuitOpenError(PublishError):
    """Fast failure: the breaker is open because NATS looked unreachable.

    Nothing was sent. Retry after :attr:`retry_after` seconds, or hand the event to a
    fallback (a dead-letter file, for example).
    """

    # No Python-level __init__ and a message formatted only when shown: this error is
    # raised on the fast-fail path, whose cost is a few hundred nanoseconds.
    args: tuple[int, float]

    if TYPE_CHECKING:  # the C-level BaseException.__init__ does the work at run time

        def __init__(self, attempt: int, retry_after: float) -> None: ...

    @property
    def attempt(self) -> int:
        """How many probes have failed since the circuit opened."""
        return self.args[0]

    @property
    def retry_after(self) -> float:
        """Seconds until the next probe is allowed (0.0 when a probe is due or running)."""
        return self.args[1]

    def __str__(self) -> str:
        return (
            f"NATS JetStream is unreachable (reconnect attempt {self.attempt}); the event was "
            f"not sent, retry in {self.retry_after:.3f}s or spill it to a fallback sink"
        )


class PublishTimeoutError(PublishError, TimeoutError):
    """No acknowledgement arrived in time: the outcome is unknown.

    The event may still have been stored. Re-emitting the same event (same ``id``) within
    the stream's duplicate window is safe: JetStream deduplicates it by ``Nats-Msg-Id``.
    """


class NoStreamError(PublishError):
    """No JetStream stream captures the subject (the server answered "no responders")."""


class StreamMismatchError(PublishError):
    """The acknowledgement came from a different stream than the one configured."""
