"""What a caller hands to the runner's loop, and waits on for the outcome.

A :class:`PublishRequest` is a subject, a payload, headers and a deadline; its subclasses
decide how the outcome reaches the caller: a future (:class:`FutureRequest`) or a lock the
caller blocks on (:class:`BlockingRequest`). :class:`SendOrder` ties requests that must be
sent in their queue order. The loop thread fills in the bookkeeping fields.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Callable, Optional

from ._breaker import Permit
from ._errors import SinkClosedError
from ._lean_future import make_future
from ._seam import PubAck

__all__ = ["BlockingRequest", "FutureRequest", "OutcomeHook", "PublishRequest", "SendOrder"]

#: Told the outcome of a request just before its caller can see it: ``(request, ack, None)``,
#: ``(request, None, error)``, or ``(request, None, None)`` when the caller gave up on it.
OutcomeHook = Callable[["PublishRequest", Optional[PubAck], Optional[BaseException]], None]


class SendOrder:
    """Requests that must reach the connection as a prefix of their queue order.

    Once one of them is not sent (it waited in the queue past its deadline, its caller
    cancelled it, its write failed for good), none queued after it is sent either. The
    spool's replay pipelines a window of events and sends an unsent one again on its next
    pass: had those behind it been sent meanwhile, JetStream would store it after them.
    Only the loop thread reads or writes it.
    """

    __slots__ = ("broken",)

    def __init__(self) -> None:
        self.broken = False


class PublishRequest:
    """One message to publish; subclasses decide how its outcome reaches the caller."""

    __slots__ = (
        "ack_token",
        "attempts",
        "caller_thread",
        "deadline",
        "deadline_slot",
        "headers",
        "holds_slot",
        "order",
        "payload",
        "permit",
        "seq",
        "settled",
        "subject",
    )

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        deadline: float,
        permit: Permit,
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        #: ``time.monotonic()`` after which the outcome no longer matters to the caller.
        self.deadline = deadline
        #: The breaker's permit for this publish, handed back to the outcome hook.
        self.permit = permit
        #: ``threading.get_ident()`` of the thread that made it.
        self.caller_thread = threading.get_ident()
        # The publisher's token for the ack awaited, and the sends made so far.
        self.ack_token = 0
        self.attempts = 0
        # The deadline's slot on the loop's clock (see LoopRunner._watch_deadline).
        self.deadline_slot = 0
        # Set by the runner when the outcome is handed over: a second verdict (a late ack
        # after a failure that was not foreseen) must not reach the caller or the counts.
        self.settled = False
        # Its place in the queue's order, given by the loop when it takes the request.
        self.seq = -1
        # Whether it counts against max_in_flight (from its send until its outcome, or
        # until it outlived the slot timeout).
        self.holds_slot = False
        #: Set for requests that must be sent as a prefix of their queue order (replay).
        self.order: Optional[SendOrder] = None
        self._set_up_waiting()

    def _set_up_waiting(self) -> None:
        """Make what the caller waits on: the subclasses do."""
        # A hook, not an __init__ of theirs: forwarding the arguments to this one would
        # cost every emit() a tuple and a dict.

    def claim(self) -> bool:
        """Called once, just before sending: ``False`` when the caller already gave up."""
        return True

    def resolve(self, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
        """Hand the outcome to the caller; the runner calls this exactly once."""
        raise NotImplementedError


class FutureRequest(PublishRequest):
    """A request whose outcome lands in a ``concurrent.futures.Future``."""

    __slots__ = ("future",)

    def _set_up_waiting(self) -> None:
        self.future: concurrent.futures.Future[PubAck] = make_future()

    def claim(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def resolve(self, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
        future = self.future
        # A caller that gave up may have cancelled the future while it was still queued.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if error is not None:
                future.set_exception(error)
            elif ack is not None:
                future.set_result(ack)


class BlockingRequest(PublishRequest):
    """A request whose caller blocks in :meth:`wait`.

    A bare lock, released when the outcome is in, costs a fraction of a
    ``concurrent.futures.Future`` (a condition, a reentrant lock, two lists), and
    leaves nothing for the garbage collector to trace.
    """

    __slots__ = ("_ack", "_done", "_error", "_unclaimed", "given_up_unsent")

    def _set_up_waiting(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        # One token, popped by whoever comes first: the loop about to send, or the caller
        # giving up. list.pop() is atomic, so exactly one of them wins, without a lock.
        self._unclaimed = [True]
        #: Set when the caller gave up before the loop took the request: never sent.
        self.given_up_unsent = False
        self._ack: Optional[PubAck] = None
        self._error: Optional[BaseException] = None

    def claim(self) -> bool:
        try:
            return self._unclaimed.pop()
        except IndexError:
            return False

    def resolve(self, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
        self._ack, self._error = ack, error
        self._done.release()

    def wait(self, timeout: float, grace: float = 0.0) -> bool:
        """Block until the outcome is in; ``False`` if it is not (then it is abandoned).

        After ``timeout`` a request still queued is given up at once: it is never sent
        (:attr:`given_up_unsent`). One already sent gets ``grace`` more seconds for the
        loop to report its outcome (its deadline timer fires on a 50 ms slot).
        """
        if _acquire_in_slices(self._done, timeout):
            return True
        try:
            self.given_up_unsent = self._unclaimed.pop()
        except IndexError:  # sent, or being sent: its outcome is on the way
            return _acquire_in_slices(self._done, grace)
        return False

    def outcome(self) -> PubAck:
        """The ack, once :meth:`wait` returned ``True``; raises the publish error instead."""
        if self._error is not None:
            raise self._error
        if self._ack is None:
            raise SinkClosedError("the publish was given up before it was sent")
        return self._ack


#: Longest single sleep of a blocked emit() on its lock (see _acquire_in_slices).
_WAIT_SLICE_SECONDS = 0.25


def _acquire_in_slices(lock: threading.Lock, timeout: float) -> bool:
    """``lock.acquire(timeout=timeout)``, asleep for at most a slice at a time.

    A Ctrl-C whose signal lands on another thread, or on this one just before it goes to
    sleep on the lock (seen with CPython 3.13), interrupts nothing: the interpreter only
    raises KeyboardInterrupt once this thread runs Python code again. Waking at the end
    of each slice bounds that delay to the slice, not the whole publish timeout.
    """
    if lock.acquire(timeout=min(timeout, _WAIT_SLICE_SECONDS)):
        return True
    deadline = time.monotonic() + timeout - _WAIT_SLICE_SECONDS
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if lock.acquire(timeout=min(remaining, _WAIT_SLICE_SECONDS)):
            return True
