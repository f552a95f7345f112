"""What the event model accepts, ``to_json()`` writes and ``from_json()`` reads back.

``CloudEventV1(...)``, ``create()`` and ``from_dict()`` validate everything, so an event
that exists can be sent: what cannot be written is refused at construction with
``InvalidEventError`` naming the attribute, never at emit time. The property tests drive
the three constructors with hostile values (surrogates, control characters, NaN,
infinities, ints longer than Python will write, odd types, odd time offsets) and check
the promise for whatever they accept.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellos_sink_jetstream import CloudEventV1, Connected, InvalidEventError, JetStreamEventSink
from cellos_sink_jetstream._event import MAX_DATA_DEPTH
from tests._nats import read_stream
from tests.conftest import StagedStream

# Python refuses to write ints longer than this as text (0: no limit); json.dumps too.
INT_DIGITS_LIMIT: int = getattr(sys, "get_int_max_str_digits", lambda: 0)()


class BigInt(int):
    """An int subclass: written as the int it is."""


Make = Callable[[Any], CloudEventV1]


def with_data_direct(data: Any) -> CloudEventV1:
    return CloudEventV1(id="e-1", source="/s", type="t", data=data)


def with_data_create(data: Any) -> CloudEventV1:
    return CloudEventV1.create("t", "/s", data, id="e-1")


def with_data_from_dict(data: Any) -> CloudEventV1:
    return CloudEventV1.from_dict(
        {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t", "data": data}
    )


CONSTRUCTORS = [with_data_direct, with_data_create, with_data_from_dict]


@pytest.fixture
def int_digits_limit() -> Iterator[int]:
    """A known limit for the test (4300, Python's default), restored afterwards."""
    if not hasattr(sys, "set_int_max_str_digits"):  # an old 3.9: no limit to test against
        yield 0
        return
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    try:
        yield 4300
    finally:
        sys.set_int_max_str_digits(before)


def as_read_back(data: Any) -> Any:
    """``data`` as JSON gives it back: tuples become lists (documented)."""
    if isinstance(data, (list, tuple)):
        return [as_read_back(item) for item in data]
    if isinstance(data, dict):
        return {key: as_read_back(value) for key, value in data.items()}
    return data


def round_trips(event: CloudEventV1) -> None:
    written = event.to_json()
    again = CloudEventV1.from_json(written)
    assert again == dataclasses.replace(event, data=as_read_back(event.data))
    assert again.to_json() == written


@pytest.mark.parametrize("make", CONSTRUCTORS)
@pytest.mark.parametrize(
    "shape", [lambda n: n, lambda n: -n, lambda n: {"n": n}, lambda n: [1, {"x": [n]}], BigInt]
)
def test_an_int_too_long_to_write_is_refused_at_construction(
    int_digits_limit: int, make: Make, shape: Callable[[int], Any]
) -> None:
    at_limit = 10**4300 - 1  # 4300 digits
    over = 10**4300  # 4301 digits
    round_trips(make(shape(at_limit)))
    if int_digits_limit == 0:  # this interpreter writes ints of any length
        round_trips(make(shape(over)))
        return
    with pytest.raises(InvalidEventError) as info:
        make(shape(over))
    assert info.value.attribute == "data"
    message = str(info.value)
    assert "4300 digits" in message
    assert "str" in message  # what to do: send it as a str


@pytest.mark.parametrize("sign", [1, -1])
def test_an_extension_int_too_long_to_write_is_refused_naming_the_extension(
    int_digits_limit: int, sign: int
) -> None:
    # Outside int32 whatever its length; over the digits limit, writing the value into
    # the message must not itself fail with the interpreter's bare ValueError.
    huge = sign * 10**5000
    makers: list[Callable[[], CloudEventV1]] = [
        lambda: CloudEventV1.create("t", "/s", extensions={"ext1": huge}),
        lambda: CloudEventV1.from_dict(
            {"specversion": "1.0", "id": "1", "type": "t", "source": "/s", "ext1": huge}
        ),
        lambda: CloudEventV1(id="1", source="/s", type="t", extensions={"ext1": huge}),
    ]
    for make in makers:
        with pytest.raises(InvalidEventError) as info:
            make()
        assert info.value.attribute == "ext1"
        assert "CloudEvents Integer range" in str(info.value)


def test_the_int_limit_is_the_interpreters_current_one(int_digits_limit: int) -> None:
    if int_digits_limit == 0:
        round_trips(with_data_direct(10**5000))
        return
    sys.set_int_max_str_digits(0)  # no limit: anything goes
    round_trips(with_data_direct(10**5000))
    sys.set_int_max_str_digits(1000)
    with pytest.raises(InvalidEventError, match="1000 digits"):
        with_data_direct(10**1000)
    round_trips(with_data_direct(10**1000 - 1))


def at_stack_depth(depth: int, build: Callable[[], Any]) -> Any:
    return build() if depth <= 0 else at_stack_depth(depth - 1, build)


def test_deep_data_from_a_deep_stack_is_refused_as_data_not_a_recursion_error() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DATA_DEPTH - 1):
        deep = [deep]
    round_trips(with_data_direct(deep))  # at the top of the stack: fine
    nearly_full = sys.getrecursionlimit() - 100
    with pytest.raises(InvalidEventError, match="call stack") as info:
        at_stack_depth(nearly_full, lambda: with_data_direct(deep))
    assert info.value.attribute == "data"
    # Writing from there: Python 3.12+ counts C recursion apart from Python frames, so
    # the C encoder may manage; if it cannot, the error names data and says why.
    event = with_data_direct(deep)
    outcome: Any
    try:
        outcome = at_stack_depth(nearly_full, event.to_json)
    except InvalidEventError as exc:
        outcome = exc
    if isinstance(outcome, InvalidEventError):
        assert outcome.attribute == "data"
        assert "call stack" in str(outcome)
    else:
        assert outcome == event.to_json()


def test_emit_refuses_an_unwritable_mapping_before_sending(
    stream: StagedStream, int_digits_limit: int
) -> None:
    too_long = 10**4300
    with JetStreamEventSink.connect(stream.url, stream.subject("ints"), env={}) as sink:
        mapping = {"specversion": "1.0", "id": "i-1", "source": "/s", "type": "t"}
        if int_digits_limit:
            with pytest.raises(InvalidEventError) as info:
                sink.emit({**mapping, "data": {"n": too_long}})
            assert info.value.attribute == "data"
            assert sink.stats().failed == 0
        else:
            sink.emit({**mapping, "data": {"n": too_long}})
        sink.emit({**mapping, "id": "i-2", "data": {"n": too_long - 1}})  # 4300 digits
        assert sink.state == Connected()
    stored = read_stream(stream.url, stream.name)
    assert [json.loads(m.data)["id"] for m in stored][-1] == "i-2"


# -- the property ---------------------------------------------------------------------

any_text = st.text(st.characters(), max_size=12)  # surrogates and controls included
plain_text = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Cn", "Zs")), min_size=1, max_size=12
)


def mostly_plain(hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plain text 9 times in 10, else ``hostile``: enough events get through to be written."""
    return st.integers(0, 9).flatmap(lambda n: hostile if n == 0 else plain_text)


# Long ints are built, not listed: hypothesis shows a strategy's elements with repr(),
# which refuses ints over the limit.
long_ints = st.builds(
    lambda digits, sign, kind: kind(sign * 10 ** (digits - 1)),
    st.sampled_from([4299, 4300, 4301, 5000]),
    st.sampled_from([1, -1]),
    st.sampled_from([int, BigInt]),
)
odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    long_ints,
    st.floats(),  # NaN and infinities included
    any_text,
    st.sampled_from([b"x", bytearray(b"y"), (1, 2), {1, 2}, Decimal("1.5"), object()]),
)
odd_values = st.recursive(
    odd_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(any_text, st.integers(0, 3)), children, max_size=4)
    ),
    max_leaves=16,
)
good_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    long_ints,
)
good_values = st.recursive(
    good_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",))), children, max_size=4)
    ),
    max_leaves=16,
)
odd_offsets = st.builds(
    timedelta,
    minutes=st.integers(-24 * 60 + 1, 24 * 60 - 1),
    seconds=st.integers(0, 59) | st.just(0),
)
aware_times = st.datetimes(timezones=st.builds(timezone, odd_offsets) | st.just(timezone.utc))
odd_times = st.integers(0, 3).flatmap(
    lambda n: aware_times if n else st.one_of(st.none(), st.datetimes(), any_text)  # naive
)
extension_maps = st.dictionaries(
    st.integers(0, 9).flatmap(
        lambda n: any_text if n == 0 else st.from_regex(r"[a-z0-9]{1,21}", fullmatch=True)
    ),
    st.one_of(st.booleans(), st.integers(), mostly_plain(any_text), st.floats(), st.none()),
    max_size=4,
)
attributes = st.fixed_dictionaries(
    {
        "id": mostly_plain(any_text),
        "source": mostly_plain(any_text),
        "type": mostly_plain(any_text),
    },
    optional={
        "subject": mostly_plain(st.none() | any_text),
        "time": odd_times,
        "datacontenttype": mostly_plain(st.none() | any_text),
        "dataschema": mostly_plain(st.none() | any_text),
        "data": st.integers(0, 2).flatmap(lambda n: good_values if n else odd_values),
        "extensions": extension_maps,
    },
)

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def accepted_is_written(build: Callable[[], CloudEventV1]) -> None:
    try:
        event = build()
    except InvalidEventError as exc:
        refused: InvalidEventError = exc
    else:
        round_trips(event)
        return
    assert isinstance(refused.attribute, str)
    assert refused.attribute


@given(attrs=attributes)
@PROPERTY
def test_whatever_the_constructor_accepts_is_written_and_read_back(attrs: dict[str, Any]) -> None:
    accepted_is_written(lambda: CloudEventV1(**attrs))


@given(attrs=attributes)
@PROPERTY
def test_whatever_create_accepts_is_written_and_read_back(attrs: dict[str, Any]) -> None:
    kwargs = dict(attrs)
    event_type, source = kwargs.pop("type"), kwargs.pop("source")
    accepted_is_written(lambda: CloudEventV1.create(event_type, source, **kwargs))


@given(attrs=attributes)
@PROPERTY
def test_whatever_from_dict_accepts_is_written_and_read_back(attrs: dict[str, Any]) -> None:
    mapping: dict[str, Any] = {"specversion": "1.0", **attrs}
    mapping.update(mapping.pop("extensions", {}))
    if isinstance(mapping.get("time"), datetime):
        moment = mapping["time"]
        mapping["time"] = moment.isoformat()
    accepted_is_written(lambda: CloudEventV1.from_dict(mapping))
