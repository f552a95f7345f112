"""The breaker as a pure state machine: fake clock, freezegun, racing threads."""

from __future__ import annotations

import threading
import time

import pytest
from freezegun import freeze_time

from cellos_sink_jetstream import FailureCause
from cellos_sink_jetstream._breaker import (
    CircuitBreaker,
    Connected,
    Permit,
    Reconnecting,
    backoff_delay,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(clock)
    permit = breaker.admit()
    assert permit is not None
    breaker.record_failure(permit)
    return breaker


def test_schedule_doubles_from_100ms_and_caps_at_3_minutes() -> None:
    delays = [backoff_delay(n) for n in range(14)]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[10] == pytest.approx(102.4)
    assert delays[11:] == [180.0, 180.0, 180.0]
    assert backoff_delay(10_000) == 180.0


def test_starts_connected_and_admits_without_probe() -> None:
    breaker = CircuitBreaker(FakeClock())
    permit = breaker.admit()
    assert breaker.state == Connected()
    assert permit is not None
    assert not permit.is_probe


def test_first_failure_opens_for_100ms() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    assert breaker.state == Reconnecting(attempt=0, next_after=pytest.approx(1000.1))


def test_fails_fast_until_next_after_then_admits_one_probe() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(0.099)
    assert breaker.admit() is None
    assert breaker.retry_after() == pytest.approx(0.001)
    clock.advance(0.001)
    probe = breaker.admit()
    assert probe is not None
    assert probe.is_probe
    assert breaker.admit() is None, "a second caller must not probe while one runs"
    assert breaker.rejections == 2


def test_rejections_are_counted_exactly_across_racing_threads_and_reads() -> None:
    breaker = open_breaker(FakeClock())
    per_thread, threads = 2000, 8
    start = threading.Barrier(threads + 1)

    def refuse() -> None:
        start.wait()
        for _ in range(per_thread):
            assert breaker.admit() is None

    workers = [threading.Thread(target=refuse) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    seen = [breaker.rejections for _ in range(500)]  # reads racing the refusals
    for worker in workers:
        worker.join()
    assert seen == sorted(seen), "the count never goes back"
    assert breaker.rejections == threads * per_thread
    assert breaker.rejections == threads * per_thread, "reading does not count"


def test_failed_probes_walk_the_schedule_and_success_resets() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    for failed_probes in range(13):
        state = breaker.state
        assert isinstance(state, Reconnecting)
        assert state.attempt == failed_probes
        clock.now = state.next_after
        probe = breaker.admit()
        assert probe is not None
        breaker.record_failure(probe)
        new = breaker.state
        assert isinstance(new, Reconnecting)
        assert new.next_after - clock.now == pytest.approx(backoff_delay(failed_probes + 1))
    assert breaker.state.next_after - clock.now == 180.0  # type: ignore[union-attr]
    clock.now = breaker.state.next_after  # type: ignore[union-attr]
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    assert breaker.state == Connected()
    # Reset: the next failure starts again at attempt 0 and 100 ms.
    permit = breaker.admit()
    assert permit is not None
    breaker.record_failure(permit)
    assert breaker.state == Reconnecting(0, pytest.approx(clock.now + 0.1))


def test_results_of_publishes_admitted_before_opening_are_stale() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    early_a, early_b, early_c = breaker.admit(), breaker.admit(), breaker.admit()
    assert early_a
    assert early_b
    assert early_c
    breaker.record_failure(early_a)
    opened = breaker.state
    breaker.record_success(early_b)
    assert breaker.state == opened, "a stale success must not close the circuit"
    breaker.record_failure(early_c)
    assert breaker.state == opened, "a stale failure must not push the schedule"


def test_released_probe_lets_the_next_caller_probe_at_once() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    probe = breaker.admit()
    assert probe is not None
    breaker.release(probe)
    assert isinstance(breaker.state, Reconnecting)
    again = breaker.admit()
    assert again is not None
    assert again.is_probe


def test_transitions_are_reported_once_each() -> None:
    seen: list[tuple[object, object]] = []
    clock = FakeClock()
    breaker = CircuitBreaker(clock, on_transition=lambda old, new: seen.append((old, new)))
    permits = [breaker.admit() for _ in range(5)]
    for permit in permits:
        assert permit is not None
        breaker.record_failure(permit)
    assert len(seen) == 1
    clock.advance(0.1)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_success(probe)
    assert [type(new).__name__ for _, new in seen] == ["Reconnecting", "Connected"]


def test_default_clock_is_driven_by_freezegun() -> None:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        breaker = CircuitBreaker()
        permit = breaker.admit()
        assert permit is not None
        breaker.record_failure(permit)
        state = breaker.state
        assert isinstance(state, Reconnecting)
        assert state.next_after == pytest.approx(time.monotonic() + 0.1)
        frozen.tick(0.05)
        assert breaker.admit() is None
        frozen.tick(0.05)
        probe = breaker.admit()
        assert probe is not None
        breaker.record_failure(probe)
        frozen.tick(0.19)
        assert breaker.admit() is None
        frozen.tick(0.01)
        assert breaker.admit() is not None


def test_exactly_one_of_64_racing_threads_gets_the_probe() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    barrier = threading.Barrier(64)
    results: list[object] = []
    lock = threading.Lock()

    def racer() -> None:
        barrier.wait()
        permit = breaker.admit()
        with lock:
            results.append(permit)

    threads = [threading.Thread(target=racer) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [p for p in results if p is not None]
    assert len(results) == 64
    assert len(probes) == 1


def test_reset_forgets_an_open_circuit_and_a_running_probe() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    stale_probe = breaker.admit()
    assert stale_probe is not None
    breaker.reset()
    assert breaker.state == Connected()
    permit = breaker.admit()
    assert permit is not None
    assert not permit.is_probe
    breaker.record_success(stale_probe)  # the parent's probe, recorded late: harmless
    assert breaker.state == Connected()


def test_the_state_carries_the_cause_of_the_failure_that_last_moved_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    first, stale = breaker.admit(), breaker.admit()
    assert first is not None
    assert stale is not None
    breaker.record_failure(first, FailureCause.NO_STREAM)
    state = breaker.state
    assert isinstance(state, Reconnecting)
    assert state.cause is FailureCause.NO_STREAM
    breaker.record_failure(stale, FailureCause.TIMEOUT)
    assert breaker.state.cause is FailureCause.NO_STREAM, "a stale failure moves nothing"  # type: ignore[union-attr]
    clock.advance(0.1)
    probe = breaker.admit()
    assert probe is not None
    breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)
    assert breaker.state == Reconnecting(1, pytest.approx(clock.now + 0.2))
    assert breaker.state.cause is FailureCause.CONNECTION_DOWN  # type: ignore[union-attr]


def open_at_attempt(clock: FakeClock, attempt: int) -> CircuitBreaker:
    """A breaker whose circuit opened and then failed ``attempt`` probes."""
    breaker = CircuitBreaker(clock)
    permit = breaker.admit()
    assert permit is not None
    breaker.record_failure(permit, FailureCause.CONNECTION_DOWN)
    for _ in range(attempt):
        clock.now = breaker.state.next_after  # type: ignore[union-attr]
        probe = breaker.admit()
        assert probe is not None
        breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)
    return breaker


def test_a_restored_connection_makes_the_next_probe_due_at_once_and_only_that() -> None:
    clock = FakeClock()
    breaker = open_at_attempt(clock, 9)
    assert breaker.state == Reconnecting(9, pytest.approx(clock.now + 51.2))
    clock.advance(1.0)
    assert breaker.admit() is None
    assert breaker.connection_restored()
    state = breaker.state
    assert state == Reconnecting(9, clock.now), "only next_after moves"
    assert isinstance(state, Reconnecting)
    assert state.cause is FailureCause.CONNECTION_DOWN
    assert breaker.retry_after() == 0.0
    assert not breaker.connection_restored(), "already due: nothing to move"
    probe = breaker.admit()
    assert probe is not None
    assert probe.is_probe
    assert breaker.admit() is None, "still exactly one probe"
    clock.advance(0.5)
    breaker.record_failure(probe, FailureCause.NO_STREAM)
    # The schedule resumes where it was: attempt 10, 102.4 s after the failed probe.
    assert breaker.state == Reconnecting(10, pytest.approx(clock.now + 102.4))


def test_a_restored_connection_during_a_probe_admits_no_second_one() -> None:
    clock = FakeClock()
    breaker = open_at_attempt(clock, 2)
    clock.now = breaker.state.next_after  # type: ignore[union-attr]
    probe = breaker.admit()
    assert probe is not None
    assert not breaker.connection_restored(), "a probe is running: its due time has passed"
    assert breaker.admit() is None
    breaker.record_success(probe)
    assert breaker.state == Connected()


def test_a_restored_connection_changes_nothing_while_connected() -> None:
    seen: list[object] = []
    clock = FakeClock()
    breaker = CircuitBreaker(clock, on_transition=lambda old, new: seen.append(new))
    assert not breaker.connection_restored()
    assert breaker.state == Connected()
    permit = breaker.admit()
    assert permit is not None
    assert not permit.is_probe
    breaker.record_failure(permit)
    clock.advance(0.01)
    assert breaker.connection_restored()
    assert seen == [Reconnecting(0, pytest.approx(clock.now + 0.09))], "not a transition"


def test_a_restored_connection_is_driven_by_freezegun_too() -> None:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        breaker = CircuitBreaker()
        permit = breaker.admit()
        assert permit is not None
        breaker.record_failure(permit, FailureCause.CONNECTION_DOWN)
        for _ in range(6):  # attempt 6: the next probe is 6.4 s away
            frozen.tick(backoff_delay(breaker.state.attempt))  # type: ignore[union-attr]
            probe = breaker.admit()
            assert probe is not None
            breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)
        frozen.tick(1.0)
        assert breaker.admit() is None
        assert breaker.retry_after() == pytest.approx(5.4)
        assert breaker.connection_restored()
        assert breaker.state == Reconnecting(6, time.monotonic())
        probe = breaker.admit()
        assert probe is not None
        assert breaker.admit() is None
        frozen.tick(0.2)
        breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)
        assert breaker.state == Reconnecting(7, pytest.approx(time.monotonic() + 12.8))
        frozen.tick(12.7)
        assert breaker.admit() is None
        frozen.tick(0.1)
        probe = breaker.admit()
        assert probe is not None
        breaker.record_success(probe)
        assert breaker.state == Connected()


def test_64_threads_racing_a_restored_connection_get_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker = open_at_attempt(clock, 8)
    clock.advance(1.0)  # the scheduled probe is still 24.6 s away
    for attempt in (8, 9, 10):
        barrier = threading.Barrier(64)
        permits: list[object] = []
        lock = threading.Lock()

        def racer(n: int) -> None:
            barrier.wait()
            # Half the threads see the reconnection first, half try their luck before it.
            got = [] if n % 2 else [breaker.admit()]
            breaker.connection_restored()
            got.append(breaker.admit())
            with lock:
                permits.extend(p for p in got if p is not None)

        threads = [threading.Thread(target=racer, args=(n,)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(permits) == 1, f"round {attempt}: {len(permits)} probes"
        (probe,) = permits
        assert probe.is_probe  # type: ignore[attr-defined]
        breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)  # type: ignore[arg-type]
        assert breaker.state.attempt == attempt + 1  # type: ignore[union-attr]


def test_admit_or_refuse_says_attempt_retry_after_and_cause_of_the_refusing_state() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    permit = breaker.admit_or_refuse()
    assert isinstance(permit, Permit)
    assert not permit.is_probe
    breaker.record_failure(permit, FailureCause.NO_STREAM)
    clock.advance(0.04)
    assert breaker.admit_or_refuse() == (0, pytest.approx(0.06), FailureCause.NO_STREAM)
    clock.advance(0.07)
    probe = breaker.admit_or_refuse()
    assert isinstance(probe, Permit)
    assert probe.is_probe
    assert breaker.admit_or_refuse() == (0, 0.0, FailureCause.NO_STREAM)  # a probe is running
    breaker.record_failure(probe, FailureCause.CONNECTION_DOWN)
    assert breaker.admit_or_refuse() == (1, pytest.approx(0.2), FailureCause.CONNECTION_DOWN)
    assert breaker.rejections == 3
