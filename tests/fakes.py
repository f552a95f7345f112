"""Fake publishers and a fake clock for unit tests of the facade and the breaker (no NATS).

:class:`GatedPublisher` and :class:`InstantPublisher` implement the runner's seam,
:class:`~cellos_sink_jetstream._seam.PipelinedPublisher`, as ``NatsPublisher`` does, so the
facade's unit tests run the production dispatch code. :class:`SimplePublisher` is the
simple ``publish()`` kind users may pass to ``from_publisher`` (adapted to the seam).
:class:`FakeClock` is a :class:`~cellos_sink_jetstream.DeadlineClock` (and a breaker
clock): a test advances it to make ack deadlines pass without waiting.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from cellos_sink_jetstream import DeadlineClock, PubAck, PublishError
from cellos_sink_jetstream._seam import AckListener

#: A timer of FakeClock: when, tie-breaker, the loop that set it, the callback.
_Timer = tuple[float, int, asyncio.AbstractEventLoop, Callable[[], object]]


class FakeClock:
    """Time that moves only when the test moves it.

    Call it (the breaker's ``clock``) or read :meth:`time`; pass it as ``deadline_clock``
    and the runner's ack deadlines and slot timeouts wait on it. :meth:`call_at` runs on a
    sink's loop thread and only records the timer; :meth:`advance` moves :attr:`now` and
    runs each timer that came due on the loop that set it, earliest first, returning once
    they all ran. Setting :attr:`now` directly runs nothing (as the breaker-only tests do).
    """

    def __init__(self, now: float = 5000.0) -> None:
        self.now = now
        self._changed = threading.Condition()
        self._timers: list[_Timer] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        with self._changed:
            entry: _Timer = (when, next(self._order), loop, functools.partial(callback, *args))
            heapq.heappush(self._timers, entry)
            self._changed.notify_all()

    def timers(self) -> list[float]:
        """When each waiting timer is due, earliest first."""
        with self._changed:
            return sorted(when for when, *_ in self._timers)

    def wait_for_timers(self, count: int, timeout: float = 5.0) -> list[float]:
        """Block until ``count`` timers wait (set on the loop thread); return :meth:`timers`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._timers) >= count, timeout):
                raise AssertionError(f"{len(self._timers)} timers set, not {count}, in {timeout}s")
        return self.timers()

    def advance(self, seconds: float, timeout: float = 5.0) -> None:
        """Move :attr:`now` on by ``seconds`` and run every timer now due, in time order."""
        self.now += seconds
        while True:
            with self._changed:
                if not self._timers or self._timers[0][0] > self.now:
                    return
                _, _, loop, callback = heapq.heappop(self._timers)
            ran = threading.Event()

            def run(callback: Callable[[], object] = callback, ran: threading.Event = ran) -> None:
                try:
                    callback()
                finally:
                    ran.set()

            try:
                loop.call_soon_threadsafe(run)
            except RuntimeError:  # that loop is closed: its sink is gone
                continue
            if not ran.wait(timeout):
                raise AssertionError(f"a timer's callback did not run within {timeout}s")


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

    With a ``clock``, each ack comes ``ack_after`` seconds on that clock after its send
    instead (when a test advances it); a send forgotten before then never hears its ack.
    While ``failing`` is set, a send fails at once, as NatsPublisher's does while the
    connection is down.
    """

    def __init__(self, clock: Optional[DeadlineClock] = None, ack_after: float = 0.0) -> None:
        super().__init__()
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.failing = threading.Event()
        self._seq = itertools.count(1)
        self.max_payload = 1024 * 1024
        self._clock = clock
        self._ack_after = ack_after
        self._awaited: set[int] = set()  # tokens whose ack is on the clock, not forgotten

    def send_now(
        self, subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any
    ) -> int:
        if self.failing.is_set():
            raise PublishError("fake: NATS is down")
        self.received.append((subject, payload, dict(headers)))
        ack = PubAck("CELLOS", next(self._seq), False)
        token = next(self._tokens)
        clock = self._clock
        if clock is None:
            asyncio.get_running_loop().call_soon(self._listener, receiver, ack, None)
        else:
            self._awaited.add(token)
            clock.call_at(clock.time() + self._ack_after, self._ack, token, receiver, ack)
        return token

    def _ack(self, token: int, receiver: Any, ack: PubAck) -> None:
        if token in self._awaited:
            self._awaited.remove(token)
            self._listener(receiver, ack, None)

    def forget(self, token: int) -> None:
        self._awaited.discard(token)


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
