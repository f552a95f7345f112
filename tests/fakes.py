"""Fake publishers for unit tests of the facade and the breaker (no NATS involved).

:class:`GatedPublisher` and :class:`InstantPublisher` implement the runner's seam,
:class:`~cellos_sink_jetstream._seam.PipelinedPublisher`, as ``NatsPublisher`` does, so the
facade's unit tests run the production dispatch code. :class:`SimplePublisher` is the
simple ``publish()`` kind users may pass to ``from_publisher`` (adapted to the seam).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from cellos_sink_jetstream import PubAck, PublishError
from cellos_sink_jetstream._seam import AckListener


@dataclass
class Call:
    """One publish the fake received; ``resolve`` settles it from any thread."""

    subject: str
    payload: bytes
    headers: Mapping[str, str]
    resolve: Callable[..., None] = field(repr=False)

    def ack(self, seq: int = 1, duplicate: bool = False, stream: str = "CELLOS") -> None:
        self.resolve(result=PubAck(stream, seq, duplicate))

    def fail(self, error: Optional[BaseException] = None) -> None:
        self.resolve(error=error or PublishError("fake failure"))


def _unheard(receiver: Any, ack: Optional[PubAck], error: Optional[BaseException]) -> None:
    raise AssertionError("send_now() before listen()")


class _SeamFake:
    """What the fakes share of the seam: the listener, tokens, nothing to flush or close."""

    def __init__(self) -> None:
        self._listener: AckListener = _unheard
        self._tokens = itertools.count()

    def listen(self, listener: AckListener) -> None:
        self._listener = listener

    def flush_writes(self) -> None:
        pass

    async def close(self) -> None:
        pass


class GatedPublisher(_SeamFake):
    """Every send waits until the test settles it through :attr:`calls`."""

    def __init__(self, max_payload: Optional[int] = None) -> None:
        super().__init__()
        self.calls: queue.Queue[Call] = queue.Queue()
        self.concurrent = 0
        self.max_concurrent = 0
        # Sends awaiting their outcome, by token; a forgotten one is dropped.
        self._open: dict[int, Any] = {}
        if max_payload is not None:
            self.max_payload = max_payload

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        self._open[token] = receiver

        def settle(result: Optional[PubAck], error: Optional[BaseException]) -> None:
            if self._open.pop(token, None) is None:
                return  # forgotten, or settled before
            self.concurrent -= 1
            self._listener(receiver, result, error)

        def resolve(result: Optional[PubAck] = None, error: Optional[BaseException] = None) -> None:
            loop.call_soon_threadsafe(settle, result, error)

        self.calls.put(Call(subject, payload, dict(headers), resolve))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        return token

    def forget(self, token: int) -> None:
        if self._open.pop(token, None) is not None:
            self.concurrent -= 1

    def next_call(self, timeout: float = 5.0) -> Call:
        return self.calls.get(timeout=timeout)


class InstantPublisher(_SeamFake):
    """Acks on the next loop turn with increasing sequence numbers.

    While ``failing`` is set, a send fails at once, as NatsPublisher's does while the
    connection is down.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.failing = threading.Event()
        self._seq = itertools.count(1)
        self.max_payload = 1024 * 1024

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        if self.failing.is_set():
            raise PublishError("fake: NATS is down")
        self.received.append((subject, payload, dict(headers)))
        ack = PubAck("CELLOS", next(self._seq), False)
        asyncio.get_running_loop().call_soon(self._listener, receiver, ack, None)
        return next(self._tokens)

    def forget(self, token: int) -> None:
        pass  # acks on the next turn: nothing is pending long enough to forget


class SimplePublisher:
    """A simple ``publish()`` publisher (the ``Publisher`` protocol) that acks at once."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.failing = threading.Event()
        self._seq = itertools.count(1)
        self.max_payload = 1024 * 1024

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        if self.failing.is_set():
            raise PublishError("fake: NATS is down")
        self.received.append((subject, payload, dict(headers)))
        return PubAck("CELLOS", next(self._seq), False)
