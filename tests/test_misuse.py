"""The sink's contract under misuse (issue #9), against real nats-server processes.

Every test here drives the public API as a careless or hostile caller would and then
checks that the sink still keeps its promises: a clear typed error for bad input, no
event lost or misreported, a background thread that keeps draining.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest

from cellos_sink_jetstream import (
    CloudEventV1,
    ConfigError,
    JetStreamEventSink,
)
from tests._nats import read_stream
from tests.conftest import StagedStream

#: Timeouts no call may accept: not finite, not positive, past the documented bound, or
#: not a number at all.
BAD_TIMEOUTS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    1e10,
    86_400.5,
    0,
    0.0,
    -1,
    "1",
    True,
]


def event(n: int, prefix: str = "misuse", **kwargs: Any) -> CloudEventV1:
    return CloudEventV1(
        id=f"{prefix}-{n}", source="/misuse", type="cell.misuse", data={"n": n}, **kwargs
    )


def stored_ids(stream: StagedStream) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in read_stream(stream.url, stream.name) if m.headers]


# -- 1. timeouts ------------------------------------------------------------------------

CALLS_WITH_A_TIMEOUT: dict[str, Callable[[JetStreamEventSink, Any], object]] = {
    "publish": lambda sink, t: sink.publish(event(0, "bad-timeout"), timeout=t),
    "emit_nowait": lambda sink, t: sink.emit_nowait(event(0, "bad-timeout"), timeout=t),
    "flush": lambda sink, t: sink.flush(timeout=t),
    "close": lambda sink, t: sink.close(timeout=t),
}


@pytest.mark.parametrize("call", sorted(CALLS_WITH_A_TIMEOUT))
def test_a_bad_timeout_is_refused_before_anything_is_queued(
    stream: StagedStream, call: str
) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("timeouts"), publish_timeout=2.0
    ) as sink:
        for n, bad in enumerate(BAD_TIMEOUTS):
            with pytest.raises(ConfigError, match="timeout") as info:
                CALLS_WITH_A_TIMEOUT[call](sink, bad)
            assert not isinstance(info.value, OverflowError)
            assert not sink.closed, f"close(timeout={bad!r}) closed the sink anyway"
            # The loop still drains: a normal emit goes through at once.
            sink.emit(event(n, f"after-{call}"))
        assert sink.stats().published == len(BAD_TIMEOUTS)
    assert "bad-timeout-0" not in stored_ids(stream)


@pytest.mark.parametrize("option", ["publish_timeout", "connect_timeout", "reconnect_time_wait"])
def test_a_bad_timeout_option_is_refused_by_the_constructors(
    stream: StagedStream, option: str
) -> None:
    for bad in BAD_TIMEOUTS:
        with pytest.raises(ConfigError, match=option):
            JetStreamEventSink.connect(stream.url, stream.subject("ctor"), **{option: bad})


def test_none_means_the_default_or_no_limit(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(stream.url, stream.subject("none")) as sink:
        sink.publish(event(1, "none"), timeout=None)
        sink.emit_nowait(event(2, "none"), timeout=None).result(10)
        assert sink.flush(timeout=None) is True
    assert sorted(stored_ids(stream)) == ["none-1", "none-2"]


def test_the_loop_drains_whatever_deadline_a_request_carries(stream: StagedStream) -> None:
    """Defence in depth: a request whose deadline is not a finite number (which the public
    API no longer lets through) still gets an outcome, and the loop keeps draining."""
    from cellos_sink_jetstream._runner import FutureRequest

    with JetStreamEventSink.connect(
        stream.url, stream.subject("deadline"), publish_timeout=2.0
    ) as sink:
        runner = sink._current_runner()
        odd = []
        for n, deadline in enumerate([math.inf, math.nan, -math.inf, 1e300]):
            request = FutureRequest(
                stream.subject("deadline"),
                b"{}",
                {"Nats-Msg-Id": f"odd-{n}"},
                deadline,
                sink._breaker.admit(),
            )
            runner.submit(request, 1.0)
            odd.append(request.future)
            sink.emit(event(n, "after-odd"))
        for future in odd:
            future.exception(10)  # an outcome, whichever
        for n in range(3):
            sink.emit(event(n, "still-draining"))
        assert sink.flush(10) is True
