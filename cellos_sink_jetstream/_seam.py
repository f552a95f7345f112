"""The seam between the sink and NATS: what a publisher offers, and what it answers.

The runner drives one interface, :class:`PipelinedPublisher`: write a message now, hear
its outcome later through one listener. :class:`NatsPublisher` implements it; a simple
:class:`Publisher` (one awaited ``publish`` per message, as in users' tests) is adapted to
it by :class:`PublisherAdapter`, so the runner has one dispatch path. The runner times
ack deadlines on a :class:`DeadlineClock`: the event loop's own, or a fake in tests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from typing_extensions import Protocol, runtime_checkable

__all__ = [
    "AckListener",
    "DeadlineClock",
    "PipelinedPublisher",
    "PubAck",
    "Publisher",
    "PublisherAdapter",
]

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
    """A JetStream client for :meth:`JetStreamEventSink.from_publisher`: publish, await the ack.

    The sink wraps it in :class:`PublisherAdapter` (one task per publish) to drive it
    like its own pipelined publisher. Implementations raise this library's
    :class:`~cellos_sink_jetstream.PublishError` subclasses; anything else is treated as a
    failure of NATS. The sink bounds every call with its publish timeout, so an
    implementation need not.
    """

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        """Publish ``payload`` to ``subject`` with ``headers`` and return JetStream's ack."""
        ...


#: Told the outcome of a pipelined send: ``(receiver, ack, None)`` or
#: ``(receiver, None, error)``, on the event loop, once per send.
AckListener = Callable[[Any, Optional[PubAck], Optional[BaseException]], None]


@runtime_checkable
class PipelinedPublisher(Protocol):
    """The seam the runner drives: writes now, outcomes later, through one listener.

    All methods are called on the runner's event loop.
    """

    def listen(self, listener: AckListener) -> None:
        """Send every outcome of :meth:`send_now` to ``listener``, once per send."""
        ...

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        """Start sending; the outcome goes to the listener with ``receiver``.

        Returns a token for :meth:`forget`. Raises a
        :class:`~cellos_sink_jetstream.PublishError` when the message cannot be written
        at all (the listener then hears nothing).
        """
        ...

    def flush_writes(self) -> None:
        """Write out what :meth:`send_now` buffered; called once per batch."""
        ...

    def forget(self, token: int) -> None:
        """Stop waiting for the outcome of one send (its deadline passed)."""
        ...

    async def close(self) -> None:
        """Release the connection; what is in flight is abandoned."""
        ...


class DeadlineClock(Protocol):
    """The clock the runner times ack deadlines on: read it, run a callback at a time.

    An asyncio event loop is one (``loop.time()``, ``loop.call_at()``), and the runner's
    own loop is the default. A test passes a fake to :meth:`JetStreamEventSink.from_publisher`
    and advances it, so a publish timeout needs no real waiting. ``call_at`` is called on
    the runner's loop thread, and its callbacks must run there too; ``time`` may be read
    from any thread.
    """

    def time(self) -> float:
        """The current time, in seconds on this clock."""
        ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> object:
        """Run ``callback(*args)`` on the runner's loop once :meth:`time` reached ``when``."""
        ...


class PublisherAdapter:
    """A simple :class:`Publisher` behind the pipelined seam: one task per send.

    Other attributes (``max_payload``, say) are the wrapped publisher's.
    """

    def __init__(self, publisher: Publisher) -> None:
        """Wrap ``publisher``; its ``publish`` runs on the runner's loop."""
        self._publisher = publisher
        self._listener: AckListener = _unheard
        self._tokens = itertools.count()
        self._sends: dict[int, asyncio.Task[None]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._publisher, name)

    def listen(self, listener: AckListener) -> None:
        """As :meth:`PipelinedPublisher.listen`."""
        self._listener = listener

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        """Start ``publish`` in a task of its own; its outcome goes to the listener."""
        token = next(self._tokens)
        self._sends[token] = asyncio.get_running_loop().create_task(
            self._send(token, subject, payload, headers, receiver)
        )
        return token

    async def _send(
        self, token: int, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> None:
        try:
            ack = await self._publisher.publish(subject, payload, headers)
        except Exception as exc:
            self._sends.pop(token, None)
            self._listener(receiver, None, exc)
        else:
            self._sends.pop(token, None)
            self._listener(receiver, ack, None)

    def flush_writes(self) -> None:
        """Nothing to do: each send's task writes for itself."""

    def forget(self, token: int) -> None:
        """Cancel the send's task: its caller gave up."""
        send = self._sends.pop(token, None)
        if send is not None:
            send.cancel()

    async def close(self) -> None:
        """Cancel what is in flight, then close the wrapped publisher if it can be."""
        sends = list(self._sends.values())
        self._sends.clear()
        for send in sends:
            send.cancel()
        if sends:
            await asyncio.wait(sends)
        close = getattr(self._publisher, "close", None)
        if close is not None:
            await close()


def _unheard(receiver: Any, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
    raise RuntimeError("PublisherAdapter.send_now() was used before listen()")
