"""The seam between the sink and NATS: what a publisher offers, and what it answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from typing_extensions import Protocol, runtime_checkable

__all__ = ["AckListener", "PubAck", "Publisher"]


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


#: Told the outcome of a pipelined send: ``(receiver, ack, None)`` or
#: ``(receiver, None, error)``, on the event loop, once per send.
AckListener = Callable[[Any, Optional[PubAck], Optional[BaseException]], None]
