"""The errors the runner settles a request with when JetStream did not acknowledge it.

Each is made afresh for each request, worded for the caller (what happened, what to do),
and :func:`is_transient` says which failures are worth another quick send.
"""

from __future__ import annotations

import logging

from ._errors import BackpressureError, PublishError, PublishTimeoutError, SinkError

__all__ = [
    "ack_timeout",
    "as_sink_error",
    "behind_an_unsent_one",
    "closed_after_send",
    "internal_error",
    "is_transient",
    "queued_past_deadline",
]

logger = logging.getLogger("cellos_sink_jetstream")


# Errors are made afresh for each request: one exception object raised in many threads
# would grow a traceback that chains all of them.
def queued_past_deadline() -> BackpressureError:
    return BackpressureError(
        "the event waited in the sink's queue past its deadline and was not sent; "
        "NATS is slower than the producers"
    )


def behind_an_unsent_one() -> BackpressureError:
    return BackpressureError(
        "an event queued before this one was not sent, so this one was not sent either "
        "(sending it would have put it ahead of the earlier one); send both again"
    )


def closed_after_send() -> PublishTimeoutError:
    # Written to the connection (or handed to the publisher): a server that was only slow
    # may still store it, so "not stored" (SinkClosedError) would be a lie.
    return PublishTimeoutError(
        "the sink closed before JetStream acknowledged the event; it may still be stored, "
        "re-emit it (same id) to be sure"
    )


def ack_timeout() -> PublishTimeoutError:
    return PublishTimeoutError(
        "no JetStream ack within the publish timeout; the event may still be stored, "
        "re-emit it (same id) to be sure"
    )


def internal_error(exc: BaseException) -> SinkError:
    return SinkError(
        f"the sink failed internally ({type(exc).__name__}) while sending the event; it may "
        f"have been stored: re-emit it (same id) to be sure"
    )


def as_sink_error(error: BaseException) -> BaseException:
    if isinstance(error, SinkError):
        return error
    logger.warning("publishing failed unexpectedly; the event was not sent", exc_info=error)
    kind = type(error)
    # A nats-py class name means nothing to the caller; a publisher's own error might.
    what = "an error in the NATS client" if kind.__module__.startswith("nats") else kind.__name__
    return PublishError(
        f"publishing failed unexpectedly ({what}, logged by 'cellos_sink_jetstream'); the "
        f"event was not sent, re-emit it"
    )


def is_transient(exc: BaseException) -> bool:
    # Fast failures worth another quick try: the connection blipped, or JetStream was not
    # ready yet after a restart. Never retried: an unknown outcome (the first attempt may
    # have been stored), the caller's own errors, and JetStream's refusals of the message
    # itself (MessageRejectedError and any other permanent one, StreamMismatchError
    # included), which get the same answer every time.
    return (
        isinstance(exc, PublishError)
        and not exc.permanent
        and not isinstance(exc, PublishTimeoutError)
    )
