"""Tests of :mod:`cellos_sink_jetstream._event`: validation, structured JSON, round trips."""

from __future__ import annotations

import base64
import copy
import dataclasses
import enum
import json
import math
import pickle
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellos_sink_jetstream._errors import InvalidEventError, PayloadTooLargeError
from cellos_sink_jetstream._event import (
    CONTENT_TYPE,
    CORE_ATTRIBUTES,
    EVENT_ATTRIBUTE,
    MAX_DATA_DEPTH,
    MAX_ID_LENGTH,
    CloudEventV1,
    format_rfc3339,
    parse_rfc3339,
)

try:  # cloudevents >= 2 (Python >= 3.10) moved the classic API under cloudevents.v1
    from cloudevents.v1.http import from_json as sdk_from_json
except ImportError:  # cloudevents 1.x, the only line that installs on Python 3.9
    from cloudevents.http import from_json as sdk_from_json  # type: ignore[no-redef,import-not-found,unused-ignore]

# --------------------------------------------------------------------------- strategies

#: Characters CloudEvents allows in a String (no controls, surrogates, noncharacters;
#: unassigned code points are left out too, which only narrows the search).
ce_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=40)
#: Any str that UTF-8 can encode, for data.
json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)

event_ids = ce_text.map(str.strip).filter(bool)
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in CORE_ATTRIBUTES
)
extension_values = st.one_of(
    st.booleans(), st.integers(min_value=-(2**31), max_value=2**31 - 1), ce_text
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
# Lists only (not tuples): tuples come back as lists, which is documented as lossy.
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=15,
)
fixed_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
whole_minute_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59)
)
aware_times = st.datetimes(
    # Keep a day away from the ends of the range so converting to UTC cannot overflow.
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.just(timezone.utc), whole_minute_offsets, fixed_offsets, st.timezones()),
)
optional_strings = st.none() | ce_text


@st.composite
def events(draw: st.DrawFn) -> CloudEventV1:
    data = draw(st.one_of(json_values, st.binary(max_size=40)))
    return CloudEventV1(
        id=draw(event_ids),
        source=draw(ce_text),
        type=draw(ce_text),
        subject=draw(optional_strings),
        time=draw(st.none() | aware_times),
        datacontenttype=draw(optional_strings),
        dataschema=draw(optional_strings),
        data=data,
        extensions=draw(st.dictionaries(extension_names, extension_values, max_size=4)),
    )


def make_event(**overrides: Any) -> CloudEventV1:
    """A valid event with every attribute set; ``overrides`` replace single attributes."""
    attributes: dict[str, Any] = {
        "id": "evt-1",
        "source": "/cellos/supervisor",
        "type": "io.cellos.cell.started",
        "subject": "cells/web-1",
        "time": datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=timezone.utc),
        "datacontenttype": "application/json",
        "dataschema": "https://schemas.example.com/cell-started.json",
        "data": {"cellId": "web-1", "ok": True},
        "extensions": {"tenantid": "acme", "attempt": 3, "replayed": False},
    }
    attributes.update(overrides)
    return CloudEventV1(**attributes)


def problem_of(excinfo: pytest.ExceptionInfo[InvalidEventError]) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- round trips


@given(events())
def test_json_round_trip_is_lossless(event: CloudEventV1) -> None:
    assert CloudEventV1.from_json(event.to_json()) == event


@given(events())
def test_dict_round_trip_is_lossless(event: CloudEventV1) -> None:
    assert CloudEventV1.from_dict(event.to_dict()) == event


@given(events())
def test_to_json_is_compact_utf8_json_of_to_dict(event: CloudEventV1) -> None:
    expected = json.dumps(
        event.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")
    assert event.to_json() == expected


@given(events())
def test_equal_events_hash_equal_and_survive_copying(event: CloudEventV1) -> None:
    twin = CloudEventV1.from_json(event.to_json())
    assert hash(twin) == hash(event)
    assert pickle.loads(pickle.dumps(event)) == event
    assert copy.deepcopy(event) == event


def as_utc(moment: datetime | None) -> datetime:
    # Not ==: an aware datetime in a DST fold or gap never equals one in another zone.
    assert moment is not None
    return moment.astimezone(timezone.utc)


@given(aware_times)
def test_time_round_trips_as_the_same_instant(moment: datetime) -> None:
    event = make_event(time=moment)
    assert as_utc(event.time) == as_utc(moment)
    assert as_utc(parse_rfc3339(format_rfc3339(moment))) == as_utc(moment)
    assert CloudEventV1.from_json(event.to_json()).time == event.time


def test_sub_minute_offset_at_the_start_of_time_is_rejected_cleanly() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(time=datetime(1, 1, 1, tzinfo=timezone(timedelta(seconds=30))))
    assert excinfo.value.attribute == "time"


@given(st.binary(max_size=200))
def test_bytes_data_round_trips(payload: bytes) -> None:
    event = make_event(data=payload, datacontenttype="application/octet-stream")
    assert CloudEventV1.from_json(event.to_json()).data == payload


def test_tuples_come_back_as_lists() -> None:
    event = make_event(data={"pair": (1, 2)})
    again = CloudEventV1.from_json(event.to_json())
    assert again.data == {"pair": [1, 2]}
    assert again != event


def test_bytearray_is_stored_as_immutable_bytes() -> None:
    payload = bytearray(b"\x00\x01")
    event = make_event(data=payload)
    payload[0] = 0xFF
    assert event.data == b"\x00\x01"
    assert type(event.data) is bytes


def test_minimal_event_round_trips_and_has_only_required_members() -> None:
    event = CloudEventV1(id="1", source="/s", type="t")
    assert json.loads(event.to_json()) == {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
    }
    assert CloudEventV1.from_json(event.to_json()) == event


# --------------------------------------------------------------------------- structured shape


def test_structured_member_order_follows_the_spec_layout() -> None:
    members = list(json.loads(make_event().to_json()))
    assert members == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "tenantid",
        "attempt",
        "replayed",
        "data",
    ]


def test_bytes_data_is_written_as_data_base64_only() -> None:
    structured = json.loads(make_event(data=b"\x00\xffhello").to_json())
    assert "data" not in structured
    assert base64.b64decode(structured["data_base64"]) == b"\x00\xffhello"
    assert list(structured)[-1] == "data_base64"


def test_json_data_is_written_as_data_only() -> None:
    structured = json.loads(make_event(data=[1, "two", None]).to_json())
    assert structured["data"] == [1, "two", None]
    assert "data_base64" not in structured


def test_no_data_means_no_data_member() -> None:
    structured = json.loads(make_event(data=None).to_json())
    assert "data" not in structured
    assert "data_base64" not in structured


def test_output_is_compact_and_keeps_non_ascii_as_utf8() -> None:
    raw = make_event(data={"name": "café ☕"}, subject="sujet-é").to_json()
    assert "café ☕".encode() in raw
    assert "sujet-é".encode() in raw
    assert b"\\u" not in raw
    assert b", " not in raw
    assert b": " not in raw


def test_to_dict_gives_the_structured_form_as_python_values() -> None:
    event = make_event(data=b"\x01")
    as_dict = event.to_dict()
    assert as_dict["time"] == "2024-05-01T12:30:00.123456Z"
    assert as_dict["data_base64"] == "AQ=="
    assert as_dict["tenantid"] == "acme"
    as_dict["id"] = "changed"
    assert event.to_dict()["id"] == "evt-1"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), "2024-05-01T12:00:00Z"),
        (
            datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2024-05-01T12:00:00.000005+05:30",
        ),
        (
            datetime(2024, 5, 1, 12, 0, tzinfo=timezone(-timedelta(hours=8))),
            "2024-05-01T12:00:00-08:00",
        ),
        (datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(0))), "2024-05-01T12:00:00Z"),
        # RFC 3339 cannot express a sub-minute offset: written as the same instant in UTC.
        (
            datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(seconds=30))),
            "2024-05-01T11:59:30Z",
        ),
        (datetime(1, 1, 1, 12, 0, tzinfo=timezone.utc), "0001-01-01T12:00:00Z"),
    ],
)
def test_time_is_written_as_rfc3339(moment: datetime, text: str) -> None:
    assert make_event(time=moment).to_dict()["time"] == text
    assert format_rfc3339(moment) == text


def test_zoneinfo_time_is_pinned_to_its_fixed_offset() -> None:
    # 01:30 on 2023-11-05 happens twice in New York; fold=1 is the second, EST (-05:00).
    moment = datetime(2023, 11, 5, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York"))
    event = make_event(time=moment)
    assert event.to_dict()["time"] == "2023-11-05T01:30:00-05:00"
    assert event.time is not None
    assert event.time.utcoffset() == timedelta(hours=-5)
    assert CloudEventV1.from_json(event.to_json()) == event


def test_content_type_constant() -> None:
    assert CONTENT_TYPE == "application/cloudevents+json"


def test_sdk_parses_our_output() -> None:
    json_event = make_event()
    parsed = sdk_from_json(json_event.to_json())
    assert parsed["id"] == "evt-1"
    assert parsed["source"] == "/cellos/supervisor"
    assert parsed["type"] == "io.cellos.cell.started"
    assert parsed["specversion"] == "1.0"
    assert parsed["tenantid"] == "acme"
    assert parsed["attempt"] == 3
    assert parsed.data == {"cellId": "web-1", "ok": True}

    binary_event = make_event(data=b"\x00\x01\xfe\xff", datacontenttype="application/octet-stream")
    assert sdk_from_json(binary_event.to_json()).data == b"\x00\x01\xfe\xff"


# --------------------------------------------------------------------------- immutability


def test_event_is_frozen() -> None:
    event = make_event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.id = "other"  # type: ignore[misc]


def test_extensions_cannot_be_mutated_through_the_event_or_the_caller_dict() -> None:
    given_extensions: dict[str, Any] = {"tenantid": "acme"}
    event = make_event(extensions=given_extensions)
    given_extensions["tenantid"] = "evil"
    assert event.extensions["tenantid"] == "acme"
    with pytest.raises(TypeError):
        event.extensions["tenantid"] = "evil"  # type: ignore[index]
    assert event.extensions == {"tenantid": "acme"}
    assert isinstance(event.extensions, Mapping)


def test_events_hash_even_with_dict_data() -> None:
    assert len({make_event(), make_event(), make_event(id="evt-2")}) == 2


def test_replace_revalidates() -> None:
    event = make_event()
    assert dataclasses.replace(event, id="evt-2").id == "evt-2"
    with pytest.raises(InvalidEventError):
        dataclasses.replace(event, id="a\r\nNats-Expected-Stream: other")


def test_data_mutated_after_construction_fails_cleanly_in_to_json() -> None:
    data: dict[str, Any] = {"value": 1.0}
    event = make_event(data=data)
    data["value"] = math.nan
    with pytest.raises(InvalidEventError) as excinfo:
        event.to_json()
    assert excinfo.value.attribute == "data"

    looping: list[Any] = []
    event = make_event(data=looping)
    looping.append(looping)
    with pytest.raises(InvalidEventError):
        event.to_json()


# --------------------------------------------------------------------------- create()


def test_create_fills_id_and_time() -> None:
    before = datetime.now(timezone.utc)
    event = CloudEventV1.create("io.cellos.x", "/src", {"a": 1}, extensions={"tenantid": "t1"})
    assert uuid.UUID(event.id).version == 4
    assert event.time is not None
    assert before <= event.time <= datetime.now(timezone.utc)
    assert event.data == {"a": 1}
    assert event.extensions == {"tenantid": "t1"}
    assert CloudEventV1.create("t", "/s").id != CloudEventV1.create("t", "/s").id


def test_create_keeps_given_id_and_time() -> None:
    moment = datetime(2020, 1, 1, tzinfo=timezone.utc)
    event = CloudEventV1.create("t", "/s", id="fixed", time=moment, subject="x")
    assert (event.id, event.time, event.subject) == ("fixed", moment, "x")


# --------------------------------------------------------------------------- invalid attributes

DISALLOWED_CHARACTERS = [
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\t",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\ud800",
    "\udfff",
    "\ufdd0",
    "\ufdef",
    "\ufffe",
    "\uffff",
    "\U0001fffe",
    "\U0010ffff",
]
STRING_ATTRIBUTES = ["id", "source", "type", "subject", "datacontenttype", "dataschema"]


@pytest.mark.parametrize("attribute", STRING_ATTRIBUTES)
@pytest.mark.parametrize("char", DISALLOWED_CHARACTERS, ids=lambda char: f"U+{ord(char[0]):04X}")
def test_disallowed_characters_in_attributes_are_rejected(attribute: str, char: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(**{attribute: f"a{char}b"})
    assert excinfo.value.attribute == attribute
    message = problem_of(excinfo)
    assert f"U+{ord(char[0]):04X}" in message
    assert char not in message  # the value is shown escaped, never raw


@pytest.mark.parametrize("char", DISALLOWED_CHARACTERS, ids=lambda char: f"U+{ord(char[0]):04X}")
def test_disallowed_characters_in_extension_values_are_rejected(char: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(extensions={"traceparent": f"00-{char}"})
    assert excinfo.value.attribute == "traceparent"


def test_header_injection_through_id_is_rejected() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(id="evt-1\r\nNats-Expected-Stream: OTHER")
    assert excinfo.value.attribute == "id"


@given(ce_text)
def test_allowed_strings_are_accepted_everywhere(text: str) -> None:
    event = make_event(source=text, type=text, subject=text, extensions={"x": text})
    assert (event.source, event.type, event.subject, event.extensions["x"]) == (
        text,
        text,
        text,
        text,
    )


@pytest.mark.parametrize("attribute", ["id", "source", "type"])
@pytest.mark.parametrize("value", ["", None, 1, b"bytes"])
def test_required_attributes_must_be_non_empty_str(attribute: str, value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(**{attribute: value})
    assert excinfo.value.attribute == attribute


@pytest.mark.parametrize("attribute", ["subject", "datacontenttype", "dataschema"])
@pytest.mark.parametrize("value", ["", 1, b"x"])
def test_optional_attributes_must_be_non_empty_str_when_present(attribute: str, value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(**{attribute: value})
    assert excinfo.value.attribute == attribute


def test_id_length_is_bounded() -> None:
    assert make_event(id="x" * MAX_ID_LENGTH).id == "x" * MAX_ID_LENGTH
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(id="x" * (MAX_ID_LENGTH + 1))
    assert excinfo.value.attribute == "id"
    assert str(MAX_ID_LENGTH) in problem_of(excinfo)
    assert len(problem_of(excinfo)) < 400


@pytest.mark.parametrize("value", [" evt", "evt ", "\u00a0evt", "evt\u3000"])
def test_id_with_surrounding_whitespace_is_rejected(value: str) -> None:
    # nats-py strips header values: " evt" and "evt" would share one Nats-Msg-Id.
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(id=value)
    assert excinfo.value.attribute == "id"


@pytest.mark.parametrize("value", ["0.3", "1.0.0", "1", "", 1.0, None])
def test_only_specversion_1_0_is_accepted(value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(specversion=value)
    assert excinfo.value.attribute == "specversion"


@pytest.mark.parametrize(
    "value", [datetime(2024, 5, 1, 12, 0), "2024-05-01T12:00:00Z", date(2024, 5, 1), 0]
)
def test_time_must_be_an_aware_datetime(value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(time=value)
    assert excinfo.value.attribute == "time"


def test_naive_time_message_says_what_to_do() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(time=datetime(2024, 5, 1))
    assert "timezone-aware" in problem_of(excinfo)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Tenantid",
        "tenant-id",
        "tenant_id",
        "tenant id",
        "x" * 21,
        "caf\u00e9",
        "a\n",
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        1,
    ],
)
def test_bad_extension_names_are_rejected(name: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(extensions={name: "v"})
    assert excinfo.value.attribute == "extensions"


def test_long_bad_extension_name_is_truncated_in_the_message() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(extensions={"X" * 10_000: "v"})
    assert len(problem_of(excinfo)) < 400


@pytest.mark.parametrize("value", [1.5, None, [1], {"a": 1}, b"x", 2**31, -(2**31) - 1, Decimal(1)])
def test_bad_extension_values_are_rejected(value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(extensions={"myext": value})
    assert excinfo.value.attribute == "myext"


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), True, False, 0, "s"])
def test_extension_value_edges_are_accepted(value: Any) -> None:
    event = make_event(extensions={"myext": value})
    again = CloudEventV1.from_json(event.to_json())
    assert again.extensions["myext"] == value
    assert type(again.extensions["myext"]) is type(value)


def test_extensions_must_be_a_mapping() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(extensions=[("a", "b")])
    assert excinfo.value.attribute == "extensions"


# --------------------------------------------------------------------------- invalid data


class Opaque:
    pass


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (math.nan, r"at data: .*nan"),
        (math.inf, r"at data: .*inf"),
        ({"a": [0, 1, 2, -math.inf]}, r"at data\['a'\]\[3\]: .*-inf"),
        ({"a": {1, 2}}, r"at data\['a'\]: .*set.*list"),
        ([frozenset()], r"at data\[0\]: .*frozenset"),
        ({"a": Opaque()}, r"at data\['a'\]: .*Opaque"),
        ({"a": [b"x"]}, r"at data\['a'\]\[0\]: bytes"),
        ([bytearray(b"x")], r"at data\[0\]: bytes"),
        ({1: "x"}, r"at data: .*key of type int"),
        ({"a": {None: "x"}}, r"at data\['a'\]: .*key of type NoneType"),
        ({"a": {(1, 2): "x"}}, r"at data\['a'\]: .*key of type tuple"),
        ({"a": {True: "x"}}, r"key of type bool"),
        ({"a": "\ud800"}, r"at data\['a'\]: .*surrogate"),
        ({"\udc80": 1}, r"key .* contains a lone surrogate"),
        ({"amount": Decimal("1.5")}, r"at data\['amount'\]: .*Decimal"),
        ({"at": datetime(2024, 1, 1)}, r"at data\['at'\]: .*datetime.*RFC 3339"),
        ({"id": uuid.UUID(int=0)}, r"at data\['id'\]: .*UUID"),
        (Opaque(), r"at data: .*Opaque"),
        (memoryview(b"x"), r"memoryview"),
    ],
)
def test_data_must_be_a_json_value(data: Any, expected: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(data=data)
    assert excinfo.value.attribute == "data"
    assert re.search(expected, problem_of(excinfo)), problem_of(excinfo)


def test_data_nesting_is_capped() -> None:
    assert make_event(data=nested_lists(MAX_DATA_DEPTH)).data == nested_lists(MAX_DATA_DEPTH)
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(data=nested_lists(MAX_DATA_DEPTH + 1))
    assert "deeper than" in problem_of(excinfo)
    assert len(problem_of(excinfo)) < 400
    with pytest.raises(InvalidEventError):
        make_event(data=nested_lists(100_000))


def test_circular_data_is_reported_as_circular() -> None:
    looping_list: list[Any] = [1]
    looping_list.append(looping_list)
    looping_dict: dict[str, Any] = {}
    looping_dict["self"] = {"again": looping_dict}
    for data in (looping_list, looping_dict):
        with pytest.raises(InvalidEventError) as excinfo:
            make_event(data=data)
        assert "circular" in problem_of(excinfo)
        assert len(problem_of(excinfo)) < 400


def test_long_path_keys_are_truncated_in_the_message() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        make_event(data={"k" * 10_000: math.nan})
    assert len(problem_of(excinfo)) < 400


def test_json_value_subclasses_are_accepted() -> None:
    class Colour(str, enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    event = make_event(data={"colour": Colour.RED, "level": Level.HIGH})
    assert json.loads(event.to_json())["data"] == {"colour": "red", "level": 3}


# --------------------------------------------------------------------------- reading


def structured(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not ...}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{",
        b"[]",
        b"null",
        b"1",
        b'"a string"',
        b"\xff\xfe\xfa",
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":NaN}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":-Infinity}',
        b'{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1,"a":2}}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + b"[" * 100_000,
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
        b'{"specversion":"1.0","id":"\\u0000","source":"/s","type":"t"}',
        b'{"specversion":"1.0","id":"\\ud800","source":"/s","type":"t"}',
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"\\udc00"}',
    ],
)
def test_from_json_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(InvalidEventError):
        CloudEventV1.from_json(raw)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b'{"id": \n', "Expecting value at the end of the text (it is cut short)"),
        (b'{"id" 1}\r\n', "Expecting ':' delimiter at column 7"),
        (b'{"id": 1,\n "x" 2}', "Expecting ':' delimiter at line 2 column 6"),
        (b'{"id": "a\x0cb"}\n', "Invalid control character at column 10"),
    ],
)
def test_json_errors_say_where_in_the_text_as_the_caller_sees_it(raw: bytes, said: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_json(raw)
    assert str(excinfo.value) == f"invalid CloudEvent: the text is not valid JSON: {said}"


@pytest.mark.parametrize(
    ("text", "said"),
    [(b"null", "null"), (b'"x"', "a string"), (b"4.5", "a number"), (b"true", "true")],
)
def test_a_json_value_that_is_not_an_object_is_named_in_json_terms(text: bytes, said: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_json(text)
    assert str(excinfo.value).endswith(f"must be a JSON object, got {said}")


def test_whole_event_errors_are_not_worded_as_an_attribute() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_json(b"[1]")
    assert str(excinfo.value) == (
        "invalid CloudEvent: a structured CloudEvent must be a JSON object, got an array"
    )
    too_large = PayloadTooLargeError(5000, 4096)
    assert str(too_large).startswith("CloudEvent too large: serialised with its headers it is")
    assert "attribute" not in str(too_large)
    assert (too_large.attribute, too_large.size, too_large.limit) == ("data", 5000, 4096)


def test_non_document_errors_name_the_event_as_a_whole() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_json(b"[1]")
    assert excinfo.value.attribute == EVENT_ATTRIBUTE
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict([1])  # type: ignore[arg-type]
    assert excinfo.value.attribute == EVENT_ATTRIBUTE


@given(st.binary(max_size=200) | st.text(max_size=200))
@settings(max_examples=300)
def test_from_json_never_raises_anything_but_invalid_event_error(raw: bytes | str) -> None:
    try:
        event = CloudEventV1.from_json(raw)
    except InvalidEventError:
        return
    assert isinstance(event, CloudEventV1)


@given(st.dictionaries(st.sampled_from(sorted(CORE_ATTRIBUTES)) | st.text(max_size=8), json_values))
def test_from_dict_never_raises_anything_but_invalid_event_error(mapping: dict[str, Any]) -> None:
    try:
        event = CloudEventV1.from_dict(mapping)
    except InvalidEventError:
        return
    assert isinstance(event, CloudEventV1)


def test_from_json_accepts_str_bytearray_and_memoryview() -> None:
    raw = make_event().to_json()
    for form in (raw, raw.decode("utf-8"), bytearray(raw), memoryview(raw)):
        assert CloudEventV1.from_json(form) == make_event()


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type"])
def test_missing_required_attribute_is_named(missing: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(**{missing: ...}))
    assert excinfo.value.attribute == missing
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(**{missing: None}))
    assert excinfo.value.attribute == missing


@pytest.mark.parametrize("empty", ["id", "source", "type"])
def test_empty_required_attribute_is_named(empty: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(**{empty: ""}))
    assert excinfo.value.attribute == empty


def test_null_members_count_as_absent() -> None:
    event = CloudEventV1.from_dict(
        structured(subject=None, time=None, data=None, data_base64=None, myext=None)
    )
    assert event == CloudEventV1(id="1", source="/s", type="t")


def test_unknown_members_become_validated_extensions() -> None:
    event = CloudEventV1.from_dict(structured(tenantid="acme", attempt=2, flag=True))
    assert event.extensions == {"tenantid": "acme", "attempt": 2, "flag": True}
    for bad in ({"Tenant": "x"}, {"tenant_id": "x"}, {"ratio": 0.5}, {"list": [1]}):
        with pytest.raises(InvalidEventError):
            CloudEventV1.from_dict(structured(**bad))


def test_data_and_data_base64_together_are_rejected() -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(data={"a": 1}, data_base64="AQ=="))
    assert excinfo.value.attribute == "data_base64"


@pytest.mark.parametrize(
    "value", ["!!!!", "AQ", "AQ=", "A Q==", "AQ==\n", "QQ==QQ==x", 12, ["AQ=="]]
)
def test_invalid_data_base64_is_rejected(value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(data_base64=value))
    assert excinfo.value.attribute == "data_base64"


def test_data_base64_is_decoded() -> None:
    assert CloudEventV1.from_dict(structured(data_base64="AAH/")).data == b"\x00\x01\xff"
    assert CloudEventV1.from_dict(structured(data_base64="")).data == b""


# --------------------------------------------------------------------------- RFC 3339 parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("2024-05-01t12:30:00z", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("2024-05-01T12:30:00-00:00", datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        (
            "2024-05-01T12:30:00+05:30",
            datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        (
            "2024-05-01T12:30:00-23:59",
            datetime(2024, 5, 1, 12, 30, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        ),
        ("2024-05-01T12:30:00.1Z", datetime(2024, 5, 1, 12, 30, 0, 100000, tzinfo=timezone.utc)),
        ("2024-05-01T12:30:00.000001Z", datetime(2024, 5, 1, 12, 30, 0, 1, tzinfo=timezone.utc)),
        (
            "2024-05-01T12:30:00.123456789123Z",
            datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=timezone.utc),
        ),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=timezone.utc)),
    ],
)
def test_parse_rfc3339_accepts(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert CloudEventV1.from_dict(structured(time=text)).time == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-05-01",
        "2024-05-01T12:30:00",
        "2024-05-01 12:30:00Z",
        "2024-05-01T12:30Z",
        "2024-5-01T12:30:00Z",
        "2024-05-01T12:30:00+0530",
        "2024-05-01T12:30:00+05",
        "2024-05-01T12:30:00+24:00",
        "2024-05-01T12:30:00+05:60",
        "2024-05-01T12:30:00.Z",
        "2024-05-01T12:30:00,5Z",
        "2024-02-30T12:30:00Z",
        "2024-13-01T12:30:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:60:00Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "2024-05-01T12:30:00Z\n",
        " 2024-05-01T12:30:00Z",
        "\uff12\uff10\uff12\uff14-05-01T12:30:00Z",
        "2024-05-01T12:30:00UTC",
        "2024-05-01T12:30:00+05:30[Asia/Kolkata]",
    ],
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        parse_rfc3339(text)
    assert excinfo.value.attribute == "time"
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(time=text))
    assert excinfo.value.attribute == "time"


@pytest.mark.parametrize("value", [1714566600, 1.5, ["2024-05-01T12:30:00Z"], {"t": 1}])
def test_time_member_must_be_a_string(value: Any) -> None:
    with pytest.raises(InvalidEventError) as excinfo:
        CloudEventV1.from_dict(structured(time=value))
    assert excinfo.value.attribute == "time"


def test_format_rfc3339_rejects_naive() -> None:
    with pytest.raises(InvalidEventError):
        format_rfc3339(datetime(2024, 1, 1))


# --------------------------------------------------------------------------- fast paths
# The event model checks the common case inline or in C and leaves the rest to the full
# checks (issue #13); these tests hold each fast path to the full check it stands in for.

from cellos_sink_jetstream import _event as event_module  # noqa: E402
from cellos_sink_jetstream import _event_data as data_module  # noqa: E402
from cellos_sink_jetstream import _event_extensions as extensions_module  # noqa: E402
from cellos_sink_jetstream import _event_ids as ids_module  # noqa: E402
from cellos_sink_jetstream import _event_time as time_module  # noqa: E402


def test_random_ids_are_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = [ids_module.random_uuid4() for _ in range(2000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert len(set(ids)) == len(ids)
    # Every variant nibble the RFC allows turns up (so the random bits under it are used).
    assert {text[19] for text in ids} == set("89ab")
    assert CloudEventV1.create("t", "/s").id[14] == "4"


rfc3339_texts = st.builds(
    lambda moment, separator, digits, zone: (
        moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
        + (f".{moment.microsecond:06d}{'7' * max(0, digits - 6)}"[: digits + 1] if digits else "")
        + zone
    ),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from("Tt"),
    st.integers(0, 9),
    st.one_of(
        st.sampled_from(["Z", "z", "+00:00", "-00:00"]),
        st.builds(
            lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
            st.sampled_from("+-"),
            st.integers(0, 25),
            st.integers(0, 61),
        ),
    ),
)


@given(text=rfc3339_texts)
@settings(max_examples=300)
def test_parse_rfc3339_reads_as_the_hand_written_reader(text: str) -> None:
    def outcome() -> Any:
        try:
            return parse_rfc3339(text)
        except InvalidEventError as exc:
            return ("refused", str(exc))

    fast = outcome()
    slow_path = time_module._FROMISOFORMAT_READS_RFC3339
    time_module._FROMISOFORMAT_READS_RFC3339 = False
    try:
        slow = outcome()
    finally:
        time_module._FROMISOFORMAT_READS_RFC3339 = slow_path
    assert fast == slow
    if isinstance(fast, datetime):
        assert fast.utcoffset() == slow.utcoffset()
        assert (fast.tzinfo is timezone.utc) == (slow.tzinfo is timezone.utc)


odd_json_scalars = st.one_of(
    json_scalars,
    st.text(max_size=5),  # surrogates included
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.sampled_from([b"x", (1, 2), {1, 2}, Decimal("1.5"), date(2024, 1, 1)]),
)
odd_json_values = st.recursive(
    odd_json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), children, max_size=4)
    ),
    max_leaves=12,
)


@given(value=odd_json_values)
@settings(max_examples=500)
def test_the_fast_data_check_accepts_nothing_the_full_check_refuses(value: Any) -> None:
    if data_module._is_plain_json(value, 0):
        data_module._check_json_value(value, 0)  # must not raise


@pytest.mark.parametrize("limit", [0, 640, 4300])
@pytest.mark.parametrize(
    "member",
    [2**63, -(2**63) - 1, 10**639, 10**640, -(10**700), 10**4299, 10**4300, "\ud800", "é", True],
    ids=lambda member: f"int{member.bit_length()}b" if type(member) is int else repr(member),
)
def test_the_fast_data_check_agrees_with_the_full_check_at_any_digit_limit(
    limit: int, member: Any
) -> None:
    # Python refuses to write ints past sys.get_int_max_str_digits(): whatever the limit,
    # the fast check accepts nothing the full check refuses.
    if not hasattr(sys, "set_int_max_str_digits"):  # an old 3.9: no limit to lower
        limit = 0
    before = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if limit:
        sys.set_int_max_str_digits(limit)
    try:
        for data in ({"n": 1, "s": "text", "member": member}, [member, "x"]):
            if data_module._is_plain_json(data, 0):
                data_module._check_json_value(data, 0)  # must not raise
            else:
                assert type(member) is not bool
    finally:
        if limit:
            sys.set_int_max_str_digits(before)


def test_the_fast_data_check_leaves_deep_and_circular_data_to_the_full_check() -> None:
    deep: Any = []
    for _ in range(MAX_DATA_DEPTH + 5):
        deep = [deep]
    assert not data_module._is_plain_json(deep, 0)
    with pytest.raises(InvalidEventError, match="deeper than"):
        make_event(data=deep)
    looping: dict[str, Any] = {}
    looping["self"] = looping
    with pytest.raises(InvalidEventError, match="circular"):
        make_event(data=looping)


def test_remembered_extension_names_do_not_let_invalid_names_through() -> None:
    make_event(extensions={"tenantid": "acme"})
    assert "tenantid" in extensions_module._VALID_EXTENSION_NAMES
    for bad in ("TenantId", "tenant_id", "a" * 21, "data", ""):
        with pytest.raises(InvalidEventError):
            make_event(extensions={bad: "x"})
        assert bad not in extensions_module._VALID_EXTENSION_NAMES
    # Past the bound, names are still checked, just no longer remembered.
    for i in range(extensions_module._MAX_REMEMBERED_NAMES + 10):
        make_event(extensions={f"x{i}": 1})
    assert len(extensions_module._VALID_EXTENSION_NAMES) <= extensions_module._MAX_REMEMBERED_NAMES
    with pytest.raises(InvalidEventError):
        make_event(extensions={"Not-Valid": 1})


def test_create_and_from_dict_build_the_same_event_as_the_constructor() -> None:
    built = make_event()
    assert CloudEventV1.from_dict(built.to_dict()) == built
    created = CloudEventV1.create(
        built.type,
        built.source,
        built.data,
        id=built.id,
        time=built.time,
        subject=built.subject,
        datacontenttype=built.datacontenttype,
        dataschema=built.dataschema,
        extensions=dict(built.extensions),
    )
    assert created == built
    assert vars(created).keys() == vars(built).keys()
    assert pickle.loads(pickle.dumps(created)) == built

    class Tagged(CloudEventV1):
        pass

    assert type(Tagged.from_dict(built.to_dict())) is Tagged


# --------------------------------------------------------------------------- from_dict's fast path


def _from_dict_outcome(mapping: Any, *, common: bool) -> Any:
    """What from_dict makes of ``mapping``: the event as written, or the refusal."""
    saved = event_module._read_common
    if not common:
        event_module._read_common = lambda mapping: None  # type: ignore[assignment]
    try:
        event = CloudEventV1.from_dict(mapping)
    except InvalidEventError as exc:
        return ("refused", exc.attribute, str(exc))
    finally:
        event_module._read_common = saved
    extensions = [(name, type(value), value) for name, value in event.extensions.items()]
    return (
        event,
        event.to_json(),
        sorted(vars(event)),
        extensions,
        None if event.time is None else (event.time.tzinfo, event.time.utcoffset()),
    )


plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)
#: Values of str attributes: mostly the common case, then everything it must send elsewhere.
attribute_values = st.one_of(
    plain_text,
    plain_text.map(lambda text: f'a"{text}'),
    plain_text.map(lambda text: f"{text}\\"),
    plain_text.map(lambda text: f" {text}"),
    st.sampled_from(["", "é", "a\tb", "a\x7fb", "\ud800", "\ufdd0", "x" * (MAX_ID_LENGTH + 1)]),
    st.sampled_from([None, 1, True, b"x", 1.5]),
    st.text(max_size=6),
)
utc_micro = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%f")
)
#: Texts in the layout of the UTC-with-microseconds fast path, one character replaced.
utc_micro_layout_near_misses = st.builds(
    lambda text, index, char: text[:index] + char + text[index + 1 :],
    st.one_of(utc_micro.map(lambda t: t + "+00:00"), utc_micro.map(lambda t: t + "Z")),
    st.integers(0, 31),
    st.one_of(
        st.sampled_from(list("0123456789-:.TtZz+ ,W\u0663\uff11")),
        st.characters(),
    ),
)


time_values = st.one_of(
    utc_micro.map(lambda text: text + "+00:00"),
    utc_micro.map(lambda text: text + "Z"),
    rfc3339_texts,
    st.sampled_from(["2024-02-30T00:00:00.000000+00:00", "2024-05-01T12:30:60.000000+00:00"]),
    st.sampled_from(["2024-05-01T12:30:00.000000+00:00", "20240501T123000.000000+00:00", 17]),
)
extension_member_values = st.one_of(
    plain_text,
    st.sampled_from(["", 'say "hi"', "back\\slash", "é", "a\nb", None, True, False, 0]),
    st.integers(min_value=-(2**32), max_value=2**32),
    st.sampled_from([1.5, [1], b"x"]),
)


@st.composite
def structured_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    """Structured CloudEvent objects, mostly of the common shape, some just off it."""
    mapping: dict[Any, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "1.0", "1.0", "0.3", 1.0, None])),
        "id": draw(st.one_of(plain_text, plain_text, attribute_values)),
        "source": draw(st.one_of(plain_text, attribute_values)),
        "type": draw(st.one_of(plain_text, attribute_values)),
    }
    for name in ("subject", "datacontenttype", "dataschema"):
        if draw(st.booleans()):
            mapping[name] = draw(st.one_of(plain_text, attribute_values))
    if draw(st.booleans()):
        # from_dict reads the UTC-with-microseconds layout inline: near misses included.
        mapping["time"] = draw(st.one_of(time_values, utc_micro_layout_near_misses))
    names = st.sampled_from(["tenantid", "attempt", "traceparent", "Tenant", "data2", "x" * 21, 1])
    for name in draw(st.lists(names, max_size=3, unique=True)):
        mapping[name] = draw(extension_member_values)
    if draw(st.booleans()):
        mapping["data"] = draw(st.one_of(json_values, odd_json_values, st.binary(max_size=4)))
    if draw(st.integers(0, 9)) == 0:
        mapping["data_base64"] = draw(st.sampled_from(["eA==", "not base64", None]))
    order = draw(st.permutations(list(mapping)))
    return {name: mapping[name] for name in order}


@given(structured_mappings())
@settings(max_examples=1000)
def test_from_dicts_fast_path_accepts_and_refuses_exactly_as_the_full_path(
    mapping: dict[Any, Any],
) -> None:
    fast = _from_dict_outcome(mapping, common=True)
    full = _from_dict_outcome(mapping, common=False)
    assert fast == full


#: Times of the UTC-with-microseconds layout that from_dict reads inline, and next to it.
common_times = st.one_of(
    utc_micro.map(lambda text: text + "+00:00"),
    utc_micro.map(lambda text: text + "Z"),
    utc_micro.map(lambda text: text[:20] + "000000" + "Z"),  # written without a fraction
    utc_micro.map(lambda text: text[:20] + "000000" + "+00:00"),
    utc_micro_layout_near_misses,
    time_values,
)


@st.composite
def common_shape_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    """Structured objects of the common shape (each optional member there or not), some
    with a time or data just off it: what from_dict reads inline."""
    mapping: dict[Any, Any] = {
        "specversion": "1.0",
        "id": draw(plain_text.filter(lambda text: text.strip() == text)),
        "source": draw(plain_text),
        "type": draw(plain_text),
    }
    for name in ("subject", "time", "datacontenttype", "dataschema"):
        if draw(st.booleans()):
            mapping[name] = draw(common_times if name == "time" else plain_text)
    for name in draw(st.lists(st.sampled_from(["tenantid", "attempt"]), max_size=2, unique=True)):
        mapping[name] = draw(st.one_of(plain_text, st.booleans(), st.integers(-5, 5)))
    if draw(st.booleans()):
        mapping["data"] = draw(st.one_of(json_values, odd_json_values, st.binary(max_size=4)))
    order = draw(st.permutations(list(mapping)))
    return {name: mapping[name] for name in order}


@given(common_shape_mappings())
@settings(max_examples=1000)
def test_from_dicts_fast_path_writes_the_common_shape_as_the_full_path(
    mapping: dict[Any, Any],
) -> None:
    make_event(extensions={"tenantid": "x", "attempt": 1})  # names known
    assert _from_dict_outcome(mapping, common=True) == _from_dict_outcome(mapping, common=False)


@pytest.mark.parametrize("present", range(16))
@pytest.mark.parametrize(
    "time",
    [
        "2024-05-01T12:30:00.123456+00:00",
        "2024-05-01T12:30:00.000000Z",
        "2024-05-01 12:30:00.123456Z",
    ],
)
def test_from_dicts_fast_path_writes_each_set_of_optional_members_as_the_full_path(
    present: int, time: str
) -> None:
    mapping: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t"}
    optional = {
        "subject": "cells/a",
        "time": time,
        "datacontenttype": "application/json",
        "dataschema": "/schemas/a",
    }
    for bit, (name, value) in enumerate(optional.items()):
        if present >> bit & 1:
            mapping[name] = value
    mapping["data"] = {"k": [1, "v"]}
    assert _from_dict_outcome(mapping, common=True) == _from_dict_outcome(mapping, common=False)


@pytest.mark.parametrize(
    "data", [{"k": 1}, [1, "v"], "text", 7, 1.5, True, b"\x00\x01", bytearray(b"\xff")]
)
def test_to_json_writes_data_of_every_kind_as_json_does(data: Any) -> None:
    event = make_event(data=data)
    written = json.loads(event.to_json())
    if isinstance(data, (bytes, bytearray)):
        assert base64.b64decode(written["data_base64"]) == data
        assert "data" not in written
    else:
        assert written["data"] == data
        assert "data_base64" not in written


def test_from_dicts_fast_path_is_taken_for_the_common_shape() -> None:
    mapping = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/cellos/supervisor",
        "type": "io.cellos.cell.started",
        "subject": "cells/web-1",
        "time": "2024-05-01T12:30:00.123456+00:00",
        "datacontenttype": "application/json",
        "tenantid": "acme",
        "attempt": 3,
        "replayed": False,
        "data": {"cellId": "web-1", "ok": True},
    }
    make_event(extensions={"tenantid": "x", "attempt": 1, "replayed": True})  # names known
    event = event_module._read_common(mapping)
    assert event is not None
    assert event == _from_dict_outcome(mapping, common=False)[0]
    assert event.to_json() == _from_dict_outcome(mapping, common=False)[1]
    for off_shape in (
        {**mapping, "subject": 'say "hi"'},  # written escaped
        {**mapping, "subject": "café"},
        {**mapping, "specversion": "0.3"},
        {**mapping, "data_base64": "eA=="},
        {**mapping, "notknownyet": "x"},
        {**mapping, "attempt": 2**40},
    ):
        assert event_module._read_common(off_shape) is None


def test_extension_values_keep_their_types_on_every_path() -> None:
    base = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}
    make_event(extensions={"flag": 1})
    for value in (1, True, "1", 0, False):
        for common in (True, False):
            event = _from_dict_outcome({**base, "flag": value}, common=common)[0]
            assert type(event.extensions["flag"]) is type(value)
            assert event.to_json().endswith(f',"flag":{json.dumps(value)}}}'.encode())


def test_the_shape_remembered_for_extensions_follows_the_mapping() -> None:
    base = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}
    make_event(extensions={"a": 1, "b": 2})
    assert dict(CloudEventV1.from_dict({**base, "a": 1}).extensions) == {"a": 1}
    assert dict(CloudEventV1.from_dict({**base, "b": 2}).extensions) == {"b": 2}
    assert dict(CloudEventV1.from_dict({**base, "a": None}).extensions) == {}
    assert list(CloudEventV1.from_dict({**base, "b": 2, "a": 1}).extensions) == ["b", "a"]
    assert dict(CloudEventV1.from_dict(base).extensions) == {}


@given(text=st.one_of(utc_micro_layout_near_misses, time_values))
@settings(max_examples=1000)
def test_reading_time_fast_and_long_ways_agree_and_write_what_format_writes(text: Any) -> None:
    def outcome(fast: bool) -> Any:
        saved = time_module._FROMISOFORMAT_READS_RFC3339
        time_module._FROMISOFORMAT_READS_RFC3339 = fast and saved
        try:
            moment, written = time_module._read_rfc3339(text)
        except InvalidEventError as exc:
            return ("refused", str(exc))
        finally:
            time_module._FROMISOFORMAT_READS_RFC3339 = saved
        assert written == format_rfc3339(moment)
        return (moment, moment.tzinfo, written)

    assert outcome(fast=True) == outcome(fast=False)


@pytest.mark.parametrize("index", [4, 7, 10, 13, 16, 19])
@pytest.mark.parametrize("separator", [",", " ", "t", "-", ":", ".", "T", "x"])
def test_each_separator_of_the_fast_time_layout_is_checked(index: int, separator: str) -> None:
    # fromisoformat (3.11+) also reads "," as the decimal mark and " " for "T": the fast
    # path must refuse what RFC 3339 refuses, at every one of its six separators.
    layout = "2026-12-02T10:11:12.345678"
    for suffix in ("+00:00", "Z"):
        text = layout[:index] + separator + layout[index + 1 :] + suffix
        saved = time_module._FROMISOFORMAT_READS_RFC3339
        outcomes = []
        for fast in (True, False):
            time_module._FROMISOFORMAT_READS_RFC3339 = fast and saved
            try:
                outcomes.append(time_module._read_rfc3339(text))
            except InvalidEventError as exc:
                outcomes.append(("refused", str(exc)))
            finally:
                time_module._FROMISOFORMAT_READS_RFC3339 = saved
        assert outcomes[0] == outcomes[1], text


_real_c_make_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]


def _c_encoder_of_another_signature(markers: Any, *args: Any) -> Any:
    if markers is None:  # how the event model builds it; json itself passes a dict
        raise TypeError("unexpected signature")
    return _real_c_make_encoder(markers, *args)


@pytest.mark.parametrize("c_encoder", [None, _c_encoder_of_another_signature])
def test_without_the_c_encoder_data_is_written_the_same(
    c_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {"é": [1, 2.5, None, True, 'x"\\\n'], "n": {"deep": []}}
    fast = "".join(data_module._json_chunks(data, 0))
    monkeypatch.setattr(json.encoder, "c_make_encoder", c_encoder)
    fallback = data_module._make_json_encoder()
    assert "".join(fallback(data, 0)) == fast
    with pytest.raises(ValueError):
        "".join(fallback(math.nan, 0))


class _Name(str):
    """A str subclass, as a member name."""


def test_extension_names_are_the_callers_own_key_objects_on_every_path() -> None:
    base = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}
    make_event(extensions={"tenantid": "x"})
    CloudEventV1.from_dict({**base, "tenantid": "x"})  # this shape is now remembered
    for common in (True, False):
        event = _from_dict_outcome({**base, _Name("tenantid"): "x"}, common=common)[0]
        assert [type(name) for name in event.extensions] == [_Name]
