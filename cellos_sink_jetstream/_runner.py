"""The background thread: one asyncio loop, one janus queue, one :class:`PipelinedPublisher`.

Callers on any thread touch only :meth:`LoopRunner.submit` (the queue's sync side), the
outcome of their request (a future, or a lock they wait on) and the settled-count that
:meth:`LoopRunner.wait_settled` watches. Everything else (the loop, the connection, the
async side of the queue) belongs to the runner's thread. The runner knows nothing of
CloudEvents: a request is a subject, a payload, headers and a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import math
import threading
import time
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, Callable, Optional, TypeVar

import janus

from ._breaker import backoff_delay
from ._busy_poll import BusyPollSelector
from ._errors import BackpressureError, ConnectError, SinkClosedError
from ._loop_wake import LoopWaker
from ._requests import OutcomeHook, PublishRequest
from ._retry import DEFAULT_RETRY_BASE_DELAY, retry_async
from ._seam import DeadlineClock, PipelinedPublisher, PubAck
from ._send_errors import (
    ack_timeout,
    as_sink_error,
    behind_an_unsent_one,
    closed_after_send,
    internal_error,
    is_transient,
    queued_past_deadline,
)
from ._timeouts import MAX_TIMEOUT_SECONDS

__all__ = ["LoopRunner", "PublisherFactory"]

logger = logging.getLogger("cellos_sink_jetstream")

PublisherFactory = Callable[[], Awaitable[PipelinedPublisher]]
_T = TypeVar("_T")


class _Drain(enum.Enum):
    """Where :meth:`LoopRunner._drain` stands; only the loop thread reads or writes it.

    (Stopped at an empty queue is ``IDLE`` plus ``_consumer_idle``: callers write that
    flag too, so it cannot live in a state only the loop may write.)
    """

    #: Not running: a caller's wake-up (or the end of a retry) runs it next.
    IDLE = enum.auto()
    #: Running (a send it makes may settle a request and ask for a drain: ignored).
    RUNNING = enum.auto()
    #: Stopped at max_in_flight: the next freed slot runs it.
    WAITING_FOR_ROOM = enum.auto()
    #: Held back while a failed write is retried, so nothing overtakes it.
    HELD = enum.auto()


#: How long the loop thread polls for the ack of a lone publish before it blocks (see
#: _busy_poll): acks took 150-300 µs on the 2-vCPU VM this was measured on; 150-600 µs
#: all took about 50 µs off emit()'s p50 there.
_ACK_BUSY_POLL_SECONDS = 300e-6

# Module names for the members: _drain reads them on every call.
_IDLE = _Drain.IDLE
_RUNNING = _Drain.RUNNING
_WAITING_FOR_ROOM = _Drain.WAITING_FOR_ROOM
_HELD = _Drain.HELD


class LoopRunner:
    """Runs publishes on a dedicated daemon thread with its own event loop."""

    def __init__(
        self,
        connect: PublisherFactory,
        *,
        max_in_flight: int,
        max_queue: int,
        retry_attempts: int,
        on_outcome: Optional[OutcomeHook] = None,
        thread_name: str = "cellos-sink-jetstream",
        slot_timeout: Optional[float] = None,
        deadline_clock: Optional[DeadlineClock] = None,
    ) -> None:
        """Prepare (but do not start) the runner.

        Args:
            connect: Coroutine factory run on the loop that returns a ready publisher.
            max_in_flight: Most publishes awaiting their ack at once.
            max_queue: Most requests waiting in the queue before ``submit`` blocks.
            retry_attempts: Attempts per publish for fast failures (see ``with_retry``).
            on_outcome: Told every outcome (on the loop thread) before the caller is.
            thread_name: Name of the background thread.
            slot_timeout: Longest time one request counts against ``max_in_flight``;
                past it, a request with a later deadline still waits for its ack but
                frees its slot, so one caller's long timeout cannot hold the queue.
            deadline_clock: The clock that times ack deadlines and the slot timeout
                (the runner's event loop by default; a fake one in tests).
        """
        self._connect = connect
        self._max_in_flight = max_in_flight
        self._max_queue = max_queue
        self._retry_attempts = retry_attempts
        self._on_outcome = on_outcome
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        #: The background thread's ident (``None`` before it ran). An attribute, not a
        #: property: every emit() reads it, to refuse a call from that very thread.
        self.thread_ident: Optional[int] = None
        self._ready = threading.Event()
        self._startup_error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._selector: Optional[BusyPollSelector] = None
        # The thread whose request was sent last (loop thread only), see _dispatch.
        self._last_caller_thread = 0
        # Times ack deadlines and slot timeouts: the loop once it exists, unless injected.
        self._clock: Optional[DeadlineClock] = deadline_clock
        # Whether that clock is time.monotonic() itself, as request deadlines are.
        self._deadlines_on_loop_time = False
        self._queue: Optional[janus.Queue[PublishRequest]] = None
        self._publisher: Optional[PipelinedPublisher] = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Acks awaited, by deadline slot (see _watch_deadline): one timer per slot, not
        # one per event.
        self._deadline_slots: dict[int, set[PublishRequest]] = {}
        self._in_flight = 0
        self._slot_timeout = slot_timeout
        self._queue_drained: Optional[asyncio.Event] = None
        # Where _drain stands (loop thread only), see _Drain.
        self._drain_state: _Drain = _IDLE
        # Set by the loop when _drain stopped at an empty queue, cleared by the callers
        # whose submit wakes it: the one flag both sides write (see _wake_consumer).
        self._consumer_idle = False
        # How callers wake _drain: without giving up the GIL where it can (see _loop_wake).
        self._waker = LoopWaker(self._drain)
        # One write-out of the connection's buffer per loop turn after acks (see _drain).
        self._flush_scheduled = False
        # The last write failed for good: the next failing one is not retried.
        self._writes_failing = False
        # Set by stop(): when the publisher must be closed by (on time.monotonic()).
        self._stop_deadline = float("inf")
        # The publisher's methods, bound once it is connected.
        self._send_now: Callable[[str, bytes, Mapping[str, str], Any], int] = _not_connected
        self._forget: Callable[[int], None] = _forget_nothing
        self._flush_writes: Callable[[], None] = _flush_nothing
        self._stopping = False
        # Set by start_in_background(): connect until it works, then call this.
        self._on_connected: Optional[Callable[[], None]] = None
        # Requests queued vs settled, for wait_settled(): the first counted by callers
        # under the lock, the second only by the loop thread.
        self._count_lock = threading.Lock()
        self._settled_changed = threading.Condition(self._count_lock)
        self._submitted = 0
        self._settled = 0
        # Outcomes arrive in any order (a retried publish settles after later ones), so
        # wait_settled() watches a watermark, not a count: every request whose place in
        # the queue (seq, given as the loop takes it) is below it is settled. Settled
        # requests above it wait in _settled_above until the gap closes. Loop thread only.
        self._taken = 0
        self._watermark = 0
        self._settled_above: set[int] = set()
        # Lowest watermark a wait_settled() caller waits for: the loop signals only then.
        self._flush_targets: list[int] = []
        self._lowest_flush_target = math.inf

    # -- caller side -------------------------------------------------------------------

    @property
    def publisher(self) -> Optional[PipelinedPublisher]:
        """The connected publisher, once :meth:`start` returned."""
        return self._publisher

    def start_in_background(self, on_connected: Callable[[], None]) -> None:
        """Start the thread and return at once; it connects until that works.

        ``on_connected`` is called on the loop thread once the publisher is ready (and
        never if :meth:`stop` comes first). Until then nothing may be submitted: the
        caller keeps its circuit open.
        """
        self._on_connected = on_connected
        self._thread.start()

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

    def run_coroutine(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coroutine`` on the loop and return its result (for rare control calls).

        Raises :class:`SinkClosedError` when the loop is not running, and
        ``concurrent.futures.TimeoutError`` after ``timeout`` seconds.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping:
            coroutine.close()
            raise SinkClosedError("the sink is closed; create a new sink to emit events")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, request: PublishRequest, timeout: Optional[float]) -> None:
        """Queue ``request``, blocking up to ``timeout`` seconds while the queue is full."""
        queue = self._queue
        if queue is None or self._stopping:
            raise SinkClosedError("the sink is closed; create a new sink to emit events")
        # The sink checks every timeout; this keeps any other value (NaN, infinity, a far
        # future) from reaching the loop's timers and deadline arithmetic, where it would
        # raise.
        latest = time.monotonic() + MAX_TIMEOUT_SECONDS
        if not request.deadline <= latest:  # NaN too
            request.deadline = latest
        try:
            queue.sync_q.put(request, timeout=timeout)
            with self._count_lock:
                self._submitted += 1
            if self._consumer_idle:
                self._wake_consumer()
        except janus.SyncQueueFull:
            raise BackpressureError(
                f"the sink's queue stayed full ({self._max_queue} events) for {timeout:g}s; "
                f"NATS is slower than the producers: slow down, or raise max_queue"
            ) from None
        except janus.SyncQueueShutDown:
            raise SinkClosedError("the sink is closed; create a new sink to emit events") from None

    def _wake_consumer(self) -> None:
        # Called after the put: if the consumer announced idleness before our item landed,
        # it re-checks the queue and finds it; if after, it sees this wake-up.
        self._consumer_idle = False
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def outstanding(self) -> int:
        """Requests submitted whose outcome the caller has not been given yet."""
        return max(0, self._submitted - self._settled)

    def wait_settled(self, timeout: Optional[float]) -> bool:
        """Wait until every request submitted before this call is settled.

        Returns ``False`` if some were not within ``timeout`` seconds (``None``: no limit).
        Requests submitted meanwhile are not waited for, so a steady stream of new
        events cannot keep the caller waiting forever.
        """
        with self._settled_changed:
            # A request is counted once it is in the queue, so the first ``target`` in
            # the queue's order were all queued before this call.
            target = self._submitted
            self._flush_targets.append(target)
            self._lowest_flush_target = min(self._flush_targets)
            try:
                return self._settled_changed.wait_for(
                    lambda: self._watermark >= target or self._loop_ended(), timeout
                )
            finally:
                self._flush_targets.remove(target)
                self._lowest_flush_target = min(self._flush_targets, default=math.inf)

    def _loop_ended(self) -> bool:
        # Closed by _run once nothing can settle any more (it then wakes wait_settled).
        loop = self._loop
        return loop is not None and loop.is_closed()

    def queue_depth(self) -> int:
        """Requests waiting in the queue (not yet handed to NATS)."""
        queue = self._queue
        return 0 if queue is None else queue.sync_q.qsize()

    def stop(self, timeout: float) -> bool:
        """Stop the loop and join the thread; returns whether it ended within ``timeout``.

        What is still queued or in flight fails with :class:`SinkClosedError`.
        """
        deadline = time.monotonic() + timeout
        self._stop_deadline = min(self._stop_deadline, deadline)
        self._stopping = True
        queue, loop = self._queue, self._loop
        if queue is not None:
            # Wakes the consumer; later submits raise SyncQueueShutDown.
            queue.shutdown()
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call: then nothing is in flight.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_in_flight)
            self._wake_consumer()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            # Joined in short slices: a Ctrl-C that the kernel hands to another thread
            # reaches Python's handler, on the main thread, only when a wait returns.
            while self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._thread.join(min(remaining, 0.1))
        return not self._thread.is_alive()

    # -- loop side -----------------------------------------------------------------------

    def _run(self) -> None:
        self.thread_ident = threading.get_ident()
        self._selector = BusyPollSelector()
        loop = asyncio.SelectorEventLoop(self._selector)
        self._loop = loop
        self._waker.attach(loop)
        if self._clock is None:
            self._clock = loop
            self._deadlines_on_loop_time = type(loop).time is asyncio.BaseEventLoop.time
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # the thread must never die silently
            logger.exception("the sink's background loop crashed: %s", type(exc).__name__)
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
        finally:
            try:
                close = getattr(self._publisher, "close", None)
                if _cancel_leftover_tasks(loop) and close is not None:
                    # One of them may have reopened the connection (a nats-py reconnect
                    # that outlived the close's cancellation, see SinkClient.close): close
                    # the publisher again now that nothing else runs.
                    loop.run_until_complete(self._close_publisher(close))
                    _cancel_leftover_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                self._waker.detach()
                loop.close()
                # Nothing can settle any more: no wait_settled() may wait for it.
                with self._settled_changed:
                    self._settled_changed.notify_all()

    async def _main(self) -> None:
        # The janus queue binds to the loop that first uses it: create it here, on ours.
        self._queue = janus.Queue(self._max_queue)
        self._queue_drained = asyncio.Event()
        try:
            if self._on_connected is None:
                self._publisher = await self._connect()
            else:
                self._ready.set()  # nobody waits for the connect
                self._publisher = await self._connect_until_up()
        except BaseException as exc:
            self._startup_error = exc
        if self._publisher is None:
            self._queue.shutdown(immediate=True)
            self._ready.set()
            await self._queue.wait_closed()
            return
        publisher = self._publisher
        publisher.listen(self._on_ack)
        self._send_now = publisher.send_now
        self._flush_writes = publisher.flush_writes
        self._forget = publisher.forget
        self._consumer_idle = True  # the queue is empty: the first submit wakes _drain
        self._ready.set()
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                logger.exception("the on-connected hook raised; ignored")
        try:
            await self._queue_drained.wait()
        finally:
            self._cancel_in_flight()
            await asyncio.sleep(0)  # let the cancelled acks' callbacks settle their callers
            if self._tasks:
                # Bounded: a publisher that ignores cancellation must not hold the thread.
                await asyncio.wait(set(self._tasks), timeout=_LEFTOVER_TASKS_TIMEOUT)
            close = getattr(self._publisher, "close", None)
            if close is not None:
                await self._close_publisher(close)
            self._queue.shutdown(immediate=True)
            await self._queue.wait_closed()

    async def _connect_until_up(self) -> Optional[PipelinedPublisher]:
        """Connect, retrying with a capped backoff until it works or :meth:`stop`."""
        attempt = 0
        while not self._stopping:
            try:
                return await self._cancellable(self._connect())
            except asyncio.CancelledError:
                if self.stopping:
                    return None
                raise
            except Exception as exc:
                log = logger.warning if attempt == 0 else logger.debug
                log("NATS is not reachable yet, connecting in the background: %s", exc)
            attempt += 1
            delay = min(_BACKGROUND_CONNECT_BASE * 2**attempt, _BACKGROUND_CONNECT_CAP)
            try:
                await self._cancellable(asyncio.sleep(delay))
            except asyncio.CancelledError:
                if self.stopping:
                    return None
                raise
        return None

    async def _cancellable(self, awaitable: Awaitable[_T]) -> _T:
        # A task in _tasks: stop() cancels those, which ends a connect or a wait at once.
        # stop() may have run its cancellation before this task existed: look first. (A
        # stop() after this check schedules its cancellation behind the task's creation.)
        if self._stopping:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise asyncio.CancelledError
        task: asyncio.Future[_T] = asyncio.ensure_future(awaitable)
        tasks: set[Any] = self._tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return await task

    async def _close_publisher(self, close: Callable[..., Awaitable[None]]) -> None:
        # Whatever is left of the stop() budget, keeping a moment to end the thread.
        budget = max(0.05, self._stop_deadline - time.monotonic() - _THREAD_EXIT_MARGIN)
        try:
            await asyncio.wait_for(close(), budget)
        except Exception as exc:  # closing must not hide why we are closing
            logger.debug("closing the publisher failed: %s", type(exc).__name__)

    def _drain(self, *, after_ack: bool = False) -> None:
        """Send queued requests until the queue is empty or the in-flight limit is reached.

        A plain callback, not a task: a caller's wake-up runs it directly, and so does the
        ack that frees an in-flight slot. Sends are synchronous (they only fill the
        connection's write buffer), so a burst costs no coroutine per event. The buffer
        is written out at the end, at once after a caller's wake-up (latency); after an
        ack, at the end of the loop turn, so that the sends freed by one read of acks
        leave in one write rather than one each (throughput).
        """
        state = self._drain_state
        if state is _RUNNING or state is _HELD:
            return  # already draining further up the stack, or held back for order
        queue, drained = self._queue, self._queue_drained
        if queue is None or drained is None:
            return  # not started yet
        async_q = queue.async_q
        self._drain_state = _RUNNING
        try:
            while self._stopping or self._in_flight < self._max_in_flight:
                try:
                    request = async_q.get_nowait()
                except janus.AsyncQueueEmpty:
                    self._consumer_idle = True
                    # What landed before the callers could see that we were idle. Only
                    # this thread takes from the queue: a size is as good as a second
                    # get_nowait(), without raising again.
                    if not async_q.qsize():
                        return
                    self._consumer_idle = False
                    request = async_q.get_nowait()
                request.seq = self._taken
                self._taken += 1
                try:
                    if not self._dispatch(request):
                        return
                except Exception as exc:  # a bug must cost one event, never the loop
                    logger.exception("sending an event failed unexpectedly; the loop goes on")
                    self._fail_unexpectedly(request, exc)
            self._drain_state = _WAITING_FOR_ROOM
        except janus.AsyncQueueShutDown:
            drained.set()
        finally:
            if self._drain_state is _RUNNING:  # not stopped at the limit or held
                self._drain_state = _IDLE
            if not after_ack:
                self._flush_writes()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop_or_fail().call_soon(self._flush_scheduled_writes)

    def _fail_unexpectedly(self, request: PublishRequest, exc: BaseException) -> None:
        # Before it counted as in flight (_dispatch finishes those itself).
        self._finish(request, error=internal_error(exc))

    def _flush_scheduled_writes(self) -> None:
        self._flush_scheduled = False
        self._flush_writes()

    def _dispatch(self, request: PublishRequest) -> bool:
        """Send one request; ``False`` when the queue must wait for its retries."""
        if self._stopping:
            self._finish(request, error=SinkClosedError("the sink closed before sending"))
            return True
        if not request.claim():
            _break_order(request)
            self._finish(request)  # the caller gave up while it waited in the queue
            return True
        order = request.order
        if order is not None and order.broken:
            self._finish(request, error=behind_an_unsent_one())
            return True
        self._in_flight += 1
        request.holds_slot = True
        previous_caller, self._last_caller_thread = self._last_caller_thread, request.caller_thread
        if self._in_flight == 1 and previous_caller == request.caller_thread:
            # A lone publish from one thread emitting in a row: while that thread waits
            # for it, no other of ours is likely to want the GIL, so the loop thread can
            # poll for the ack rather than sleep (several threads would take turns at the
            # GIL with the poller instead).
            selector = self._selector
            if selector is not None:
                selector.busy_poll(_ACK_BUSY_POLL_SECONDS)
        try:
            timeout = request.deadline - time.monotonic()
            if timeout <= 0:
                _break_order(request)
                self._finish(request, error=queued_past_deadline())
                return True
            slot_timeout = self._slot_timeout
            if slot_timeout is not None and timeout > slot_timeout:
                # Only publishes with a timeout longer than the sink's pay for this timer.
                clock = self._clock_or_fail()
                clock.call_at(clock.time() + slot_timeout, self._free_slot, request)
            send_now = self._send_now
            # Write now, settle from the publisher's ack callback. No task, future or timer
            # per event, and messages reach the connection in queue order: a failed write is
            # retried before anything behind it is sent, unless the previous write failed for
            # good too (then the connection is down and the breaker will stop the flow).
            request.attempts = 1
            try:
                token = send_now(request.subject, request.payload, request.headers, request)
            except Exception as error:
                if self._writes_failing or self._retry_attempts < 2 or not is_transient(error):
                    self._writes_failing = is_transient(error)
                    _break_order(request)
                    self._finish(request, error=as_sink_error(error))
                    return True
                self._drain_state = _HELD
                self._spawn(self._retry_send(request))
                return False
            self._writes_failing = False
            request.ack_token = token
            self._watch_deadline(request)
        except Exception as exc:  # a bug must cost one event, never the loop
            logger.exception("sending an event failed unexpectedly; the loop goes on")
            self._finish(request, error=internal_error(exc))
        return True

    async def _retry_send(self, request: PublishRequest) -> None:
        send_now = self._send_now

        async def send() -> int:
            request.attempts += 1
            return send_now(request.subject, request.payload, request.headers, request)

        try:
            # Bounded by the event's deadline: while these retries run, everything queued
            # behind waits (order), and the breaker hears nothing.
            token = await retry_async(
                self._retry_attempts - 1,
                send,
                retry_if=is_transient,
                first_delay=True,
                deadline=request.deadline,
            )
        except asyncio.CancelledError:
            self._finish(request, error=SinkClosedError("the sink closed before sending"))
            raise
        except Exception as exc:
            self._writes_failing = is_transient(exc)
            _break_order(request)
            self._finish(request, error=as_sink_error(exc))
        else:
            self._writes_failing = False
            request.ack_token = token
            self._watch_deadline(request)
        finally:
            self._drain_state = _IDLE
            self._drain()  # sends what waited behind it, and writes this one out too

    def _watch_deadline(self, request: PublishRequest) -> None:
        # Deadlines are rounded up to the next slot of _DEADLINE_SLOT_SECONDS and share
        # that slot's timer: an ack is given up at most one slot late, and a publish costs
        # a set entry rather than a timer of its own.
        # request.deadline is on time.monotonic(); the timers run on the deadline clock:
        # the loop's (asyncio's own time() reads time.monotonic(), but a subclass may
        # not), or a test's.
        if self._deadlines_on_loop_time:
            when = request.deadline
        else:
            when = self._clock_or_fail().time() + request.deadline - time.monotonic()
        slot = request.deadline_slot = math.ceil(when / _DEADLINE_SLOT_SECONDS)
        watched = self._deadline_slots.get(slot)
        if watched is None:
            watched = self._deadline_slots[slot] = set()
            self._clock_or_fail().call_at(slot * _DEADLINE_SLOT_SECONDS, self._expire_slot, slot)
        watched.add(request)

    def _expire_slot(self, slot: int) -> None:
        for request in self._deadline_slots.pop(slot, ()):
            self._forget(request.ack_token)
            self._finish(request, error=ack_timeout())

    def _on_ack(
        self, request: PublishRequest, ack: Optional[PubAck], error: Optional[BaseException]
    ) -> None:
        # The publisher's listener, on the loop thread: every send's outcome.
        if request.settled:
            return
        watched = self._deadline_slots.get(request.deadline_slot)
        if watched is not None:
            watched.discard(request)
        if error is None:
            self._finish(request, ack)
        else:
            self._after_failure(request, error)

    def _after_failure(self, request: PublishRequest, error: BaseException) -> None:
        if request.attempts < self._retry_attempts and is_transient(error) and not self._stopping:
            self._spawn(self._resend(request, error))
        else:
            self._finish(request, error=as_sink_error(error))

    async def _resend(self, request: PublishRequest, error: BaseException) -> None:
        """Send again after a transient failure the ack reported, within the deadline."""
        delay = backoff_delay(request.attempts - 1, _RETRY_BASE_DELAY, _RETRY_CAP)
        if time.monotonic() + delay >= request.deadline:
            self._finish(request, error=as_sink_error(error))
            return
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            # Cancelled by close(): an earlier attempt may have been stored.
            self._finish(request, error=closed_after_send())
            raise
        if self._stopping:
            self._finish(request, error=closed_after_send())
            return
        request.attempts += 1
        try:
            request.ack_token = self._send_now(
                request.subject, request.payload, request.headers, request
            )
        except Exception as exc:
            self._after_failure(request, exc)
            return
        self._watch_deadline(request)
        self._flush_writes()

    def _finish(
        self,
        request: PublishRequest,
        result: Optional[PubAck] = None,
        error: Optional[BaseException] = None,
    ) -> None:
        """Hand the request its outcome, once: the hook, the caller, the slot, the counts.

        For every request, sent or not: one that never held an in-flight slot just skips
        that part (one function for both, as it runs for every event).
        """
        if request.settled:
            return
        request.settled = True
        held = request.holds_slot
        if held:
            request.holds_slot = False
            self._in_flight -= 1
        # The hook runs first: a caller woken by the outcome must already see its effects
        # (a probe's success has closed the circuit by the time its emit() returns).
        if self._on_outcome is not None:
            try:
                self._on_outcome(request, result, error)
            except Exception:  # the caller must get its outcome whatever the hook did
                logger.exception("the outcome hook of a publish raised; ignored")
        try:
            request.resolve(result, error)
        finally:
            self._settled += 1
            self._advance_watermark(request.seq)
        if held and self._drain_state is _WAITING_FOR_ROOM:
            self._drain_into_freed_slot()

    def _free_slot(self, request: PublishRequest) -> None:
        # The slot timeout passed: the request keeps waiting for its ack (until its own
        # deadline) without counting against max_in_flight.
        if request.holds_slot and not request.settled:
            request.holds_slot = False
            self._in_flight -= 1
            self._drain_into_freed_slot()

    def _drain_into_freed_slot(self) -> None:
        if self._drain_state is _WAITING_FOR_ROOM:
            self._drain_state = _IDLE
            self._drain(after_ack=True)

    def _advance_watermark(self, seq: int) -> None:
        if seq != self._watermark:
            self._settled_above.add(seq)  # an earlier request is still pending
            return
        mark = seq + 1
        above = self._settled_above
        while above and mark in above:
            above.remove(mark)
            mark += 1
        self._watermark = mark
        if mark >= self._lowest_flush_target:
            with self._settled_changed:
                self._settled_changed.notify_all()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop_or_fail().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        assert loop is not None
        return loop

    def _clock_or_fail(self) -> DeadlineClock:
        clock = self._clock
        assert clock is not None
        return clock

    def _cancel_in_flight(self) -> None:
        for task in self._tasks:
            task.cancel()
        slots, self._deadline_slots = self._deadline_slots, {}
        for watched in slots.values():
            for request in watched:
                self._forget(request.ack_token)
                self._finish(request, error=closed_after_send())


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> bool:
    """Cancel the loop's tasks until none is left (bounded); whether there were any.

    nats-py may leave a reconnect or flusher task behind when its close() was cut short
    (say, while reconnecting to a dead server); destroyed pending tasks print warnings.
    A task may start others as it ends (a reconnect that ignored its cancellation starts
    the connection's tasks), hence the rounds.
    """
    deadline = time.monotonic() + _LEFTOVER_TASKS_TIMEOUT
    found = False
    while True:
        tasks = asyncio.all_tasks(loop)
        remaining = deadline - time.monotonic()
        if not tasks or remaining <= 0:
            return found
        found = True
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.wait(tasks, timeout=remaining))


_LEFTOVER_TASKS_TIMEOUT = 1.0
# Waits between background connect attempts: 0.2 s doubling up to 2 s.
_BACKGROUND_CONNECT_BASE = 0.1
_BACKGROUND_CONNECT_CAP = 2.0
# Granularity of publish deadlines on the pipelined path (callers wait 0.25 s longer).
_DEADLINE_SLOT_SECONDS = 0.05
# Waits before a send the ack reported as failed is retried (as with_retry).
_RETRY_BASE_DELAY = DEFAULT_RETRY_BASE_DELAY
_RETRY_CAP = 1.0

# Kept from the stop() budget for cancelling leftovers and ending the thread.
_THREAD_EXIT_MARGIN = 0.1


def _break_order(request: PublishRequest) -> None:
    # The request is not sent: nothing of its ordered group queued behind it may be.
    if request.order is not None:
        request.order.broken = True


def _not_connected(subject: str, payload: bytes, headers: Mapping[str, str], receiver: Any) -> int:
    raise SinkClosedError("the sink is not connected")


def _forget_nothing(token: int) -> None:
    """Nothing was sent before the publisher connected."""


def _flush_nothing() -> None:
    """Nothing was sent before the publisher connected."""
