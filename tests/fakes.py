"""Fake publishers for unit tests of the facade and the breaker (no NATS involved)."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional

from cellos_sink_jetstream import PubAck, PublishError


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


class GatedPublisher:
    """Every publish waits until the test settles it through :attr:`calls`."""

    def __init__(self, max_payload: Optional[int] = None) -> None:
        self.calls: queue.Queue[Call] = queue.Queue()
        self.concurrent = 0
        self.max_concurrent = 0
        if max_payload is not None:
            self.max_payload = max_payload

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()

        def settle(result: Optional[PubAck], error: Optional[BaseException]) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert result is not None
                future.set_result(result)

        def resolve(result: Optional[PubAck] = None, error: Optional[BaseException] = None) -> None:
            loop.call_soon_threadsafe(settle, result, error)

        self.calls.put(Call(subject, payload, dict(headers), resolve))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            return await future
        finally:
            self.concurrent -= 1

    def next_call(self, timeout: float = 5.0) -> Call:
        return self.calls.get(timeout=timeout)


class InstantPublisher:
    """Acks at once with increasing sequence numbers, or fails while ``failing`` is set."""

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
