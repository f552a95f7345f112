"""Property: no argument a caller can pass leaves the sink unable to publish (issue #9).

Hypothesis drives the public API of one sink per example with arbitrary values: timeouts
of every kind (NaN, infinities, huge, tiny, negative, not numbers), sizes (queue and
in-flight limits, payloads around the server's max_payload), events (valid or not, as
objects or mappings) and done-callbacks that raise or call back into the sink from its
own loop thread, and ``on_transition`` callbacks that do the same (tenants whose subject
no stream captures open the circuit). Each call must succeed or raise a
:class:`SinkError`, and after every step a normal ``emit()`` must still be acknowledged by
the live server within its bound (once the circuit's next probe is due, if a step opened
it). One server serves the whole module, so the examples stay cheap.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cellos_sink_jetstream import (
    CloudEventV1,
    ConfigError,
    JetStreamEventSink,
    Reconnecting,
    SinkError,
)
from cellos_sink_jetstream._server import NatsServer
from tests._nats import stage_stream
from tests._polling import wait_until

# Only these tenants' subjects are captured by a stream: any other tenant id an event
# carries gets "no stream", which opens the circuit and runs on_transition.
SUBJECT = "misuse.{tenantId}"
CAPTURED = ["misuse.acme", "misuse._default"]

PUBLISH_TIMEOUT = 5.0
# The documented bound of emit() is publish_timeout + 0.25 s; the sink enforces it itself
# (a late ack is a PublishTimeoutError, which fails the test). This only catches a call
# that hangs past it, so it is generous.
HANG_MARGIN = 2.0

_ids = itertools.count()


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(work_dir=Path(tmp_path_factory.mktemp("misuse-property")))
    try:
        server.start()
        stage_stream(server.url, "MISUSE", CAPTURED, duplicate_window=120.0)
        yield server.url
    finally:
        server.close()


timeouts = st.one_of(
    st.none(),
    st.floats(),  # NaN and the infinities included
    st.floats(min_value=1e-9, max_value=2.0),
    st.integers(min_value=-5, max_value=10**12),
    st.sampled_from([86_400.0, 86_400.000001, 1e10, -0.0]),
    st.text(max_size=3),
    st.booleans(),
)
bad_timeouts = st.one_of(
    st.floats().filter(lambda t: not 0 < t <= 86_400),
    st.integers(max_value=0),
    st.integers(min_value=86_401),
    st.text(max_size=3),
    st.booleans(),
)
sizes = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([10**9, 2**63]),
    st.floats(allow_nan=True),
    st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def events(draw: st.DrawFn) -> Any:
    """A CloudEventV1 when the model accepts the attributes, else the raw mapping."""
    attributes: dict[str, Any] = {
        # Mostly valid, so that the valid paths (and the circuit) get exercised too.
        "specversion": draw(st.sampled_from(["1.0", "1.0", "1.0", "0.3", ""])),
        "id": draw(st.one_of(st.just(f"prop-{next(_ids)}"), st.text(max_size=12))),
        "source": draw(st.sampled_from(["/misuse", "/misuse", "urn:x", ""])),
        "type": draw(st.sampled_from(["cell.misuse", "cell.misuse", ""])),
    }
    if draw(st.booleans()):
        attributes["data"] = draw(json_values)
    if draw(st.booleans()):
        # "ghost": a subject no stream captures (the circuit opens); text: anything.
        tenants = st.sampled_from(["acme", "ghost"]) | st.text(max_size=6)
        attributes["tenantid"] = draw(tenants)
    blob = draw(st.sampled_from([0, 0, 0, 100_000, 1_048_000, 1_100_000]))
    if blob:
        attributes["data"] = {"blob": "x" * blob}
    try:
        return CloudEventV1.from_dict(attributes)
    except SinkError:
        return attributes  # emit() must refuse it with a SinkError as well


def _raise(future: concurrent.futures.Future[Any]) -> None:
    raise RuntimeError("a done-callback that raises")


callbacks: dict[str, Callable[[JetStreamEventSink, list[BaseException]], Callable[..., None]]] = {
    "raises": lambda sink, got: _raise,
    "flush": lambda sink, got: lambda f: _record(got, lambda: sink.flush(1.0)),
    "emit": lambda sink, got: lambda f: _record(got, lambda: sink.emit(_plain_event())),
    "emit_nowait": lambda sink, got: (
        lambda f: _record(got, lambda: sink.emit_nowait(_plain_event()))
    ),
    "close-bad": lambda sink, got: lambda f: _record(got, lambda: sink.close(timeout=-1)),
    "stats": lambda sink, got: lambda f: _record(got, sink.stats),
}


def _record(got: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:
        got.append(exc)


def _plain_event(tenant: str = "acme") -> CloudEventV1:
    return CloudEventV1(
        id=f"plain-{next(_ids)}",
        source="/misuse",
        type="cell.misuse",
        data={"n": 1},
        extensions={"tenantid": tenant},
    )


steps = st.one_of(
    st.tuples(st.just("publish"), events(), timeouts),
    st.tuples(st.just("emit_nowait"), events(), timeouts, st.sampled_from(sorted(callbacks))),
    st.tuples(st.just("flush"), timeouts),
    st.tuples(st.just("close"), bad_timeouts),
    st.tuples(st.just("emit"), events()),
    # A valid event for a tenant no stream captures: the circuit opens, callbacks run.
    st.tuples(st.just("emit"), st.builds(lambda: _plain_event("ghost"))),
)


def _normal_emit_succeeds(sink: JetStreamEventSink) -> None:
    if isinstance(sink.state, Reconnecting):  # a step opened the circuit: await the probe
        wait_until(lambda: sink._breaker.retry_after() == 0, 30, "no probe became due")
    started = time.monotonic()
    sink.emit(_plain_event())  # raises unless acknowledged within publish_timeout + 0.25 s
    took = time.monotonic() - started
    assert took < PUBLISH_TIMEOUT + HANG_MARGIN, f"emit() took {took:.2f}s"


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    max_in_flight=sizes,
    max_queue=sizes,
    on_transition=st.sampled_from(sorted(callbacks)),
    script=st.lists(steps, min_size=1, max_size=6),
)
def test_no_argument_leaves_the_sink_unable_to_publish(
    live_url: str,
    max_in_flight: Any,
    max_queue: Any,
    on_transition: str,
    script: list[tuple[Any, ...]],
) -> None:
    options = {"max_in_flight": max_in_flight, "max_queue": max_queue}
    options = {k: v for k, v in options.items() if v is not None}
    from_callbacks: list[BaseException] = []
    sinks: list[JetStreamEventSink] = []  # the callback's way back to the sink

    transitions: list[object] = []

    def transition(old: object, new: object) -> None:
        transitions.append(new)
        callbacks[on_transition](sinks[0], from_callbacks)(None)

    try:
        sink = JetStreamEventSink.connect(
            live_url,
            SUBJECT,
            publish_timeout=PUBLISH_TIMEOUT,
            on_transition=transition,
            **options,
        )
    except ConfigError:
        sink = JetStreamEventSink.connect(
            live_url, SUBJECT, publish_timeout=PUBLISH_TIMEOUT, on_transition=transition
        )
    sinks.append(sink)
    futures: list[concurrent.futures.Future[Any]] = []
    try:
        for step in script:
            try:
                if step[0] == "publish":
                    sink.publish(step[1], timeout=step[2])
                elif step[0] == "emit_nowait":
                    future = sink.emit_nowait(step[1], timeout=step[2])
                    future.add_done_callback(callbacks[step[3]](sink, from_callbacks))
                    futures.append(future)
                elif step[0] == "flush":
                    sink.flush(timeout=step[1])
                elif step[0] == "close":
                    with pytest.raises(ConfigError):
                        sink.close(timeout=step[1])
                else:
                    sink.emit(step[1])
            except SinkError:
                pass  # refused with the library's own, typed error: fine
            assert not sink.closed
            _normal_emit_succeeds(sink)
        assert sink.flush(PUBLISH_TIMEOUT + 1) is True
        assert all(f.done() for f in futures)
        for future in futures:
            error = future.exception(0)
            assert error is None or isinstance(error, SinkError), repr(error)
        assert all(isinstance(e, SinkError) for e in from_callbacks), from_callbacks
        # Shown by --hypothesis-show-statistics: how often the circuit's callback ran.
        event(f"on_transition ran: {bool(transitions)}")
    finally:
        sink.close(timeout=PUBLISH_TIMEOUT)
        sinks.clear()
