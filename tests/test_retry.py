"""``with_retry``: unit tests with a recorded sleep and a fake clock, then a real outage."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from typing import Any, Callable

import pytest

from cellos_sink_jetstream import (
    CircuitOpenError,
    CloudEventV1,
    ConfigError,
    JetStreamEventSink,
    PubAck,
    PublishError,
    with_retry,
)
from tests._nats import read_stream
from tests.conftest import StagedStream
from tests.fakes import InstantPublisher


def make_event(n: int) -> CloudEventV1:
    return CloudEventV1(id=f"evt-{n}", source="/tests", type="cell.started", data={"n": n})


class Script:
    """A callable that raises the scripted errors in turn, then returns ``result``."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class RecordedSleep:
    """Records each wait instead of sleeping; advances ``clock`` by it when given one."""

    def __init__(self, clock: Any = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_success_returns_at_once_without_sleeping() -> None:
    sleep = RecordedSleep()
    f = Script(result=42)
    assert with_retry(3, f, sleep=sleep) == 42
    assert (f.calls, sleep.waits) == (1, [])


def test_retries_with_exponential_backoff_then_returns() -> None:
    sleep = RecordedSleep()
    f = Script(OSError("1"), OSError("2"), OSError("3"), result="done")
    assert with_retry(4, f, sleep=sleep) == "done"
    assert sleep.waits == pytest.approx([0.01, 0.02, 0.04])


def test_the_backoff_stops_growing_at_one_second() -> None:
    sleep = RecordedSleep()
    f = Script(*(OSError(str(n)) for n in range(9)), result="done")
    with_retry(10, f, sleep=sleep)
    assert sleep.waits[-3:] == pytest.approx([0.64, 1.0, 1.0])


def test_the_last_error_is_re_raised_unchanged() -> None:
    last = OSError("last")
    f = Script(OSError("first"), last)
    with pytest.raises(OSError) as info:
        with_retry(2, f, sleep=RecordedSleep())
    assert info.value is last
    assert f.calls == 2


def test_errors_outside_retry_on_are_not_retried() -> None:
    sleep = RecordedSleep()
    f = Script(KeyError("not retried"))
    with pytest.raises(KeyError):
        with_retry(5, f, retry_on=(OSError,), sleep=sleep)
    assert (f.calls, sleep.waits) == (1, [])


def test_an_open_circuit_is_retried_after_its_retry_after_not_sooner() -> None:
    sleep = RecordedSleep()
    f = Script(CircuitOpenError(0, 0.4), CircuitOpenError(1, 0.8), result="done")
    assert with_retry(3, f, retry_on=(CircuitOpenError,), sleep=sleep) == "done"
    assert sleep.waits == pytest.approx([0.4, 0.8])


def test_retry_after_is_bounded_by_max_delay() -> None:
    sleep = RecordedSleep()
    f = Script(CircuitOpenError(9, 180.0), CircuitOpenError(9, 180.0), result="done")
    with_retry(3, f, sleep=sleep, max_delay=2.5)
    with_retry(2, Script(CircuitOpenError(9, 180.0)), sleep=sleep)
    assert sleep.waits == pytest.approx([2.5, 2.5, 30.0])


def test_a_probe_in_progress_retry_after_zero_falls_back_to_the_backoff() -> None:
    sleep = RecordedSleep()
    with_retry(2, Script(CircuitOpenError(0, 0.0)), sleep=sleep)
    assert sleep.waits == pytest.approx([0.01])


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"base_delay": float("nan")}, "base_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"max_delay": "1"}, "max_delay"),
        # Delays are capped like every timeout (one day); an int too large for a float
        # raised OverflowError instead of naming the argument.
        ({"max_delay": 10**400}, "max_delay"),
        ({"base_delay": -(10**400)}, "base_delay"),
        ({"max_delay": 86_400.5}, "max_delay"),
        ({"base_delay": 1e10}, "base_delay"),
        ({"max_delay": False}, "max_delay"),
        ({"retry_on": ("not an exception",)}, "retry_on"),
        ({"retry_on": (ValueError, 3)}, "retry_on"),
        ({"sleep": None}, "sleep"),
    ],
)
def test_bad_arguments_are_config_errors_before_any_call(
    arguments: dict[str, Any], name: str
) -> None:
    options: dict[str, Any] = {"max_attempts": 3, **arguments}
    f = Script()
    with pytest.raises(ConfigError, match=name):
        with_retry(options.pop("max_attempts"), f, **options)
    assert f.calls == 0


def test_the_docstring_example_returns_the_ack_once_the_circuit_lets_it_through() -> None:
    # The example of with_retry's docstring, on a sink whose circuit is open: the first
    # attempt fails fast, the wait is the breaker's retry_after (0.1 s, not the 10 ms
    # backoff, which would fail fast again), and the second attempt is the probe.
    clock = FakeClock()
    publisher = InstantPublisher()
    sink = JetStreamEventSink.from_publisher(
        publisher, "cellos.events.x", clock=clock, retry_attempts=1
    )
    with sink:
        publisher.failing.set()
        with pytest.raises(PublishError):
            sink.emit(make_event(0))
        publisher.failing.clear()
        sleep = RecordedSleep(clock)
        event = make_event(1)

        ack = with_retry(3, lambda: sink.publish(event), retry_on=(CircuitOpenError,), sleep=sleep)

    assert ack == PubAck("CELLOS", 1, False)
    assert sleep.waits == pytest.approx([0.1])
    assert [json.loads(payload)["id"] for _, payload, _ in publisher.received] == ["evt-1"]


def in_thread(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(fn())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def test_with_retry_outlasts_a_short_outage_of_a_real_server(stream: StagedStream) -> None:
    server = stream.server
    failed_once = threading.Event()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        failed_once.set()
        time.sleep(seconds)

    with JetStreamEventSink.connect(
        stream.url, stream.subject("retry"), publish_timeout=2.0
    ) as sink:
        sink.emit(make_event(0))
        server.stop()
        # At most 0.2 s between attempts, 300 attempts: far longer than the outage.
        outcome = in_thread(
            lambda: with_retry(
                300,
                lambda: sink.publish(make_event(1)),
                retry_on=(PublishError,),
                max_delay=0.2,
                sleep=sleep,
            )
        )
        assert failed_once.wait(10), "the publish never failed while the server was down"
        server.start()
        ack = outcome.result(60)
        assert sink.stats().breaker_openings == 1
    assert (ack.stream, ack.seq, ack.duplicate) == (stream.name, 2, False)
    assert waits, "with_retry never waited: the outage was not outlasted"
    ids = [json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)]
    assert ids == ["evt-0", "evt-1"]
