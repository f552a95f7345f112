"""The background thread: one asyncio loop, one janus queue, one :class:`Publisher`.

Callers on any thread touch only :meth:`LoopRunner.submit` (the queue's sync side) and the
``concurrent.futures.Future`` of their request. Everything else (the loop, the connection,
the async side of the queue) belongs to the runner's thread. The runner knows nothing of
CloudEvents: a request is a subject, a payload, headers and a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Mapping
from typing import Callable, Optional

import janus

from ._errors import (
    BackpressureError,
    ConnectError,
    PublishError,
    PublishTimeoutError,
    SinkClosedError,
    SinkError,
    StreamMismatchError,
)
from ._publisher import PubAck, Publisher
from ._retry import retry_async

__all__ = ["LoopRunner", "PublishRequest"]

logger = logging.getLogger("cellos_sink_jetstream")

PublisherFactory = Callable[[], Awaitable[Publisher]]


class PublishRequest:
    """One message to publish, and where its outcome goes."""

    __slots__ = ("deadline", "future", "headers", "payload", "subject")

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        deadline: float,
        future: concurrent.futures.Future[PubAck],
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        #: ``time.monotonic()`` after which the outcome no longer matters to the caller.
        self.deadline = deadline
        self.future = future


def _settle(
    future: concurrent.futures.Future[PubAck],
    result: Optional[PubAck] = None,
    error: Optional[BaseException] = None,
) -> None:
    # A caller that gave up may have cancelled its future while it was still queued.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class LoopRunner:
    """Runs publishes on a dedicated daemon thread with its own event loop."""

    def __init__(
        self,
        connect: PublisherFactory,
        *,
        max_in_flight: int,
        max_queue: int,
        retry_attempts: int,
        thread_name: str = "cellos-sink-jetstream",
    ) -> None:
        """Prepare (but do not start) the runner.

        Args:
            connect: Coroutine factory run on the loop that returns a ready publisher.
            max_in_flight: Most publishes awaiting their ack at once.
            max_queue: Most requests waiting in the queue before ``submit`` blocks.
            retry_attempts: Attempts per publish for fast failures (see ``with_retry``).
            thread_name: Name of the background thread.
        """
        self._connect = connect
        self._max_in_flight = max_in_flight
        self._max_queue = max_queue
        self._retry_attempts = retry_attempts
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._ready = threading.Event()
        self._startup_error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Optional[janus.Queue[PublishRequest]] = None
        self._publisher: Optional[Publisher] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- caller side -------------------------------------------------------------------

    @property
    def thread_ident(self) -> Optional[int]:
        """The background thread's ident (``None`` before it started)."""
        return self._thread.ident

    @property
    def publisher(self) -> Optional[Publisher]:
        """The connected publisher, once :meth:`start` returned."""
        return self._publisher

    def start(self, timeout: float) -> None:
        """Start the thread and wait until the publisher is connected.

        Raises whatever the connect factory raised (a :class:`ConnectError` for NATS), or
        :class:`ConnectError` when nothing was ready within ``timeout``.
        """
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(1.0)
            raise ConnectError(f"the sink's background loop was not ready within {timeout:g}s")
        if self._startup_error is not None:
            self._thread.join(timeout)
            raise self._startup_error

    def submit(self, request: PublishRequest, timeout: Optional[float]) -> None:
        """Queue ``request``, blocking up to ``timeout`` seconds while the queue is full."""
        queue = self._queue
        if queue is None or self._stopping:
            raise SinkClosedError("the sink is closed; create a new sink to emit events")
        try:
            queue.sync_q.put(request, timeout=timeout)
        except janus.SyncQueueFull:
            raise BackpressureError(
                f"the sink's queue stayed full ({self._max_queue} events) for {timeout:g}s; "
                f"NATS is slower than the producers: slow down, or raise max_queue"
            ) from None
        except janus.SyncQueueShutDown:
            raise SinkClosedError("the sink is closed; create a new sink to emit events") from None

    def queue_depth(self) -> int:
        """Requests waiting in the queue (not yet handed to NATS)."""
        queue = self._queue
        return 0 if queue is None else queue.sync_q.qsize()

    def stop(self, timeout: float) -> bool:
        """Stop the loop and join the thread; returns whether it ended within ``timeout``.

        What is still queued or in flight fails with :class:`SinkClosedError`.
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        queue, loop = self._queue, self._loop
        if queue is not None:
            # Wakes the consumer; later submits raise SyncQueueShutDown.
            queue.shutdown()
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call: then nothing is in flight.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_in_flight)
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    # -- loop side -----------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # the thread must never die silently
            logger.exception("the sink's background loop crashed: %s", type(exc).__name__)
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        # The janus queue binds to the loop that first uses it: create it here, on ours.
        self._queue = janus.Queue(self._max_queue)
        try:
            self._publisher = await self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._queue.shutdown(immediate=True)
            self._ready.set()
            await self._queue.wait_closed()
            return
        self._ready.set()
        try:
            await self._consume(self._queue.async_q, asyncio.Semaphore(self._max_in_flight))
        finally:
            self._cancel_in_flight()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            close = getattr(self._publisher, "close", None)
            if close is not None:
                await close()
            self._queue.shutdown(immediate=True)
            await self._queue.wait_closed()

    async def _consume(
        self, queue: janus.AsyncQueue[PublishRequest], slots: asyncio.Semaphore
    ) -> None:
        while True:
            try:
                request = await queue.get()
                while True:
                    await self._dispatch(request, slots)
                    # Drain what else is queued without going back through the async
                    # condition: one wake-up serves a whole burst.
                    request = queue.get_nowait()
            except janus.AsyncQueueEmpty:
                continue
            except janus.AsyncQueueShutDown:
                return

    async def _dispatch(self, request: PublishRequest, slots: asyncio.Semaphore) -> None:
        if self._stopping:
            _settle(request.future, error=SinkClosedError("the sink closed before sending"))
            return
        await slots.acquire()
        if not request.future.set_running_or_notify_cancel():
            slots.release()  # the caller gave up while it waited in the queue
            return
        # Tasks start in creation order, so messages reach the connection in queue order.
        task = self._loop_or_fail().create_task(self._publish(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: slots.release())

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        assert loop is not None
        return loop

    def _cancel_in_flight(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _publish(self, request: PublishRequest) -> None:
        publisher = self._publisher
        assert publisher is not None
        timeout = request.deadline - time.monotonic()
        if timeout <= 0:
            _settle(
                request.future,
                error=BackpressureError(
                    "the event waited in the sink's queue past its deadline and was not sent; "
                    "NATS is slower than the producers"
                ),
            )
            return
        # One timer instead of asyncio.wait_for, which costs an extra task per publish.
        expired = False
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = self._loop_or_fail().call_later(timeout, expire)
        try:
            ack = await retry_async(
                self._retry_attempts,
                lambda: publisher.publish(request.subject, request.payload, request.headers),
                retry_if=_is_transient,
            )
        except asyncio.CancelledError:
            if not expired:
                _settle(request.future, error=SinkClosedError("the sink closed before the ack"))
                return
            _settle(
                request.future,
                error=PublishTimeoutError(
                    f"no JetStream ack within {timeout:.3g}s; the event may still be stored, "
                    f"re-emit it (same id) to be sure"
                ),
            )
        except SinkError as exc:
            _settle(request.future, error=exc)
        except Exception as exc:
            _settle(
                request.future,
                error=PublishError(f"publishing failed unexpectedly: {type(exc).__name__}"),
            )
        else:
            _settle(request.future, result=ack)
        finally:
            timer.cancel()


def _is_transient(exc: BaseException) -> bool:
    # Fast failures worth another quick try: the connection blipped, or JetStream was not
    # ready yet after a restart. Never retried: an unknown outcome (the first attempt may
    # have been stored), the caller's own errors, and a stream mismatch, which retrying
    # cannot fix.
    return isinstance(exc, PublishError) and not isinstance(
        exc, (PublishTimeoutError, StreamMismatchError)
    )
