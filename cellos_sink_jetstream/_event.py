"""The CloudEvents 1.0 event model and its structured-mode JSON form.

:class:`CloudEventV1` validates everything at construction, so an event that exists can
always be written. It writes the JSON of its (immutable) attributes and extensions then, so
:meth:`CloudEventV1.to_json` (called on every emit) only encodes ``data`` with :mod:`json`'s
C encoder and does no checking of its own beyond what :mod:`json` does anyway. ``data``
stays the caller's object and is encoded at each call, so a later change to it is written,
or refused if it made the data unwritable.

This module is pure: it knows nothing of NATS or asyncio.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol, Union

from cellos_sink_jetstream._errors import _WHOLE_EVENT, InvalidEventError

__all__ = [
    "CONTENT_TYPE",
    "CORE_ATTRIBUTES",
    "EVENT_ATTRIBUTE",
    "MAX_DATA_DEPTH",
    "MAX_ID_LENGTH",
    "SPECVERSION",
    "CloudEventV1",
    "ExtensionValue",
    "SdkEvent",
    "coerce_event",
    "format_rfc3339",
    "parse_rfc3339",
]

#: The only CloudEvents version this module reads and writes.
SPECVERSION = "1.0"

#: Media type of the structured-mode JSON that :meth:`CloudEventV1.to_json` produces.
CONTENT_TYPE = "application/cloudevents+json"

#: Longest accepted ``id``. It travels in the ``Nats-Msg-Id`` header, which the server keeps
#: in memory for the stream's whole duplicate window.
MAX_ID_LENGTH = 1024

#: Deepest nesting of lists/dicts accepted in ``data``; well below the interpreter's
#: recursion limit so neither validation nor :mod:`json` can blow the stack.
MAX_DATA_DEPTH = 200

#: Attribute names of the CloudEvents 1.0 core (plus the two data members of the JSON
#: format); an extension must not reuse any of them.
CORE_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
    }
)

#: Value of :attr:`InvalidEventError.attribute <cellos_sink_jetstream.InvalidEventError>`
#: when the problem is the document as a whole (not JSON, not an object), not one attribute.
#: The parentheses keep it from ever colliding with a real extension name.
EVENT_ATTRIBUTE = _WHOLE_EVENT

#: Type of an extension attribute value: CloudEvents String, Integer or Boolean.
ExtensionValue = Union[str, int, bool]

_EXTENSION_NAME_RE = re.compile(r"[a-z0-9]{1,20}")
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_NAIVE_TIME_PROBLEM = (
    "is a naive datetime (no tzinfo); pass a timezone-aware one, e.g. datetime.now(timezone.utc)"
)

# CloudEvents "String" forbids C0/C1 controls, surrogates and noncharacters. The
# noncharacters are U+FDD0..U+FDEF plus the last two code points of each of the 17 planes.
_PLANE_END_NONCHARACTERS = "".join(
    f"\\U{plane * 0x10000 + 0xFFFE:08x}\\U{plane * 0x10000 + 0xFFFF:08x}" for plane in range(17)
)
_DISALLOWED_CHAR_RE = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef" + _PLANE_END_NONCHARACTERS + "]"
)
# A lone surrogate cannot be encoded as UTF-8, so one inside data would only fail later,
# at serialisation time, far from the code that put it there.
_SURROGATE_RE = re.compile("[\\ud800-\\udfff]")

# Groups: second, fraction (with its dot), offset. The rest is at fixed places.
_RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,  # without it \d also matches non-ASCII digits, which int() accepts
)


# From 3.11, datetime.fromisoformat reads every RFC 3339 timestamp the regex accepts (but
# lower-case "t"/"z"), truncating fractions to microseconds and giving zero offsets
# timezone.utc, exactly as the hand-written reader does.
_FROMISOFORMAT_READS_RFC3339 = sys.version_info >= (3, 11)
_rfc3339_fullmatch = _RFC3339_RE.fullmatch
_fromisoformat = datetime.fromisoformat


_ZERO_OFFSETS = frozenset({"Z", "z", "+00:00", "-00:00"})


def _make_json_encoder() -> Callable[[Any, int], Iterable[str]]:
    """Build the function that writes a JSON value as compact JSON text, in chunks.

    Called as ``"".join(chunks(value, 0))`` (the C encoder's own signature: the second
    argument is the indent level), so that no Python frame is added per call.

    ``json.dumps`` with non-default options builds a new ``JSONEncoder`` per call, and
    ``JSONEncoder.encode`` builds a new C encoder per call; together that costs about a
    quarter of the time of writing a typical event. So the C encoder is built once here.
    It runs without circular-reference bookkeeping: a shared bookkeeping dict would not
    be thread-safe, and construction already rejects circular data (a later mutation
    still fails cleanly, with RecursionError). Where the C encoder is missing or has an
    unexpected signature, the documented ``JSONEncoder.encode`` is used.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def encode(obj: Any, _indent_level: int) -> tuple[str]:
        return (encoder.encode(obj),)

    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:
        return encode
    try:
        chunks_of = make_c_encoder(
            None,  # markers: no circular-reference bookkeeping
            encoder.default,
            json.encoder.encode_basestring,  # the non-ASCII-escaping variant
            None,  # indent
            encoder.key_separator,
            encoder.item_separator,
            False,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan
        )
    except TypeError:
        return encode
    return chunks_of  # type: ignore[no-any-return]


_json_chunks = _make_json_encoder()
# JSON text of a str, quotes included: what the encoder above writes for a str.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def _preview(value: str, limit: int = 60) -> str:
    """Return an ASCII-only, truncated rendering of ``value`` that is safe to log.

    Shared by the event and subject error messages.
    """
    if len(value) <= limit:
        return ascii(value)
    return f"{value[:limit]!a}... ({len(value)} characters)"


def _show(value: object, limit: int = 60) -> str:
    """Like :func:`_preview`, for values of any type."""
    if isinstance(value, str):
        return _preview(value)
    text = ascii(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _describe_char(char: str) -> str:
    code = ord(char)
    if code <= 0x1F or 0x7F <= code <= 0x9F:
        kind = "a control character"
    elif 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate"
    else:
        kind = "a Unicode noncharacter"
    return f"U+{code:04X} ({kind})"


def _check_string_chars(attribute: str, value: str) -> None:
    # isprintable() is exact for ASCII (it rejects 0x00-0x1F and 0x7F) and runs in C, so
    # the common all-ASCII attribute never reaches the regex.
    if value.isascii() and value.isprintable():
        return
    match = _DISALLOWED_CHAR_RE.search(value)
    if match is not None:
        raise InvalidEventError(
            attribute,
            f"contains {_describe_char(match.group())} at index {match.start()} of "
            f"{_preview(value)}; CloudEvents strings must not contain control characters "
            "(U+0000-U+001F, U+007F-U+009F, which includes CR, LF and tab), surrogates or "
            "Unicode noncharacters: remove or escape it",
        )


def _check_string(attribute: str, value: object, *, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidEventError(attribute, f"must be a str, got {type(value).__name__}")
    if not value:
        hint = "give it a value" if required else "pass None to leave it out"
        raise InvalidEventError(attribute, f"must not be empty; {hint}")
    _check_string_chars(attribute, value)


def _check_id(value: object) -> None:
    _check_string("id", value, required=True)
    assert isinstance(value, str)  # narrowed by _check_string
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEventError(
            "id",
            f"is {len(value)} characters long, over the limit of {MAX_ID_LENGTH}; "
            "use a short unique id such as a UUID",
        )
    # nats-py strips header values, so " x" and "x" would share one Nats-Msg-Id and
    # JetStream would silently drop the second event as a duplicate.
    if value != value.strip():
        raise InvalidEventError(
            "id",
            f"{_preview(value)} has leading or trailing whitespace, which is stripped from "
            "the Nats-Msg-Id header and would break deduplication; strip it first",
        )


def _int_shown(value: int) -> str:
    # Writing an int longer than sys.get_int_max_str_digits() as text raises ValueError,
    # so a long one is described by its size instead.
    if value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}<an int of about {digits} digits>"
    return str(value)


def _json_kind(value: object) -> str:
    # What json.loads gave, in the JSON terms of the text the caller wrote.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _check_extensions(extensions: object) -> dict[str, ExtensionValue]:
    """Validate ``extensions`` and return a private copy of it."""
    if type(extensions) is not dict and not isinstance(extensions, Mapping):
        raise InvalidEventError(
            "extensions", f"must be a mapping of name to value, got {type(extensions).__name__}"
        )
    checked: dict[str, ExtensionValue] = {}
    for name, value in extensions.items():
        if name not in _VALID_EXTENSION_NAMES:  # the same few names come back on every event
            _check_extension_name(name)
        if type(value) is str:
            if not (value.isascii() and value.isprintable()):
                _check_string_chars(name, value)
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not _INT32_MIN <= value <= _INT32_MAX:
                raise InvalidEventError(
                    name,
                    f"integer {_int_shown(value)} is outside the CloudEvents Integer range "
                    f"[{_INT32_MIN}, {_INT32_MAX}]; send it as a str instead",
                )
        elif isinstance(value, str):
            _check_string_chars(name, value)
        else:
            raise InvalidEventError(
                name,
                f"extension values must be str, int or bool, got {type(value).__name__}; "
                "convert it (timestamps and URIs as str, binary as base64 str)",
            )
        checked[name] = value
    return checked


def _check_extension_name(name: object) -> None:
    """Refuse an invalid extension name; remember a valid one (while there is room)."""
    if not isinstance(name, str) or _EXTENSION_NAME_RE.fullmatch(name) is None:
        shown = _preview(name) if isinstance(name, str) else repr(type(name).__name__)
        raise InvalidEventError(
            "extensions",
            f"extension name {shown} is invalid: names must be 1 to 20 characters "
            "from a-z and 0-9 (lower case, no '-' or '_')",
        )
    if name in CORE_ATTRIBUTES:
        raise InvalidEventError(
            "extensions",
            f"extension name {name!r} is a core CloudEvents attribute; set it through "
            "its own argument instead",
        )
    if len(_VALID_EXTENSION_NAMES) < _MAX_REMEMBERED_NAMES:
        _VALID_EXTENSION_NAMES.add(name)


# Extension names that passed the checks above (a bounded set: names are few in practice).
_VALID_EXTENSION_NAMES: set[str] = set()
_MAX_REMEMBERED_NAMES = 256


class _DataProblem(Exception):
    """Internal: carries a problem found in ``data`` up the stack, collecting its path."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        # Filled while unwinding, innermost first.
        self.path: list[str] = []
        self.container_ids: list[int] = []


_TOO_DEEP_PROBLEM = (
    f"nesting is deeper than {MAX_DATA_DEPTH} levels of lists and dicts; flatten the data"
)
_SURROGATE_PROBLEM = "a lone surrogate, which UTF-8 cannot encode"
_NO_STACK_LEFT_PROBLEM = (
    "is nested too deeply to be checked or written from this deep in the call stack "
    "(RecursionError); flatten the data, or build and emit the event nearer the top of the "
    "stack"
)

_TYPE_HINTS = {
    "set": "use a list",
    "frozenset": "use a list",
    "datetime": "use an RFC 3339 str",
    "date": "use an ISO 8601 str",
    "Decimal": "use a str or float",
    "UUID": "use str(value)",
}


def _check_object_key(key: object) -> None:
    if not isinstance(key, str):
        raise _DataProblem(
            f"an object key of type {type(key).__name__} ({_show(key)}) is not allowed; "
            "JSON object keys must be str"
        )
    if _SURROGATE_RE.search(key) is not None:
        raise _DataProblem(f"the object key {_preview(key)} contains {_SURROGATE_PROBLEM}")


def _check_json_value(value: Any, depth: int) -> None:
    """Raise :class:`_DataProblem` unless ``value`` is a JSON value :mod:`json` can write."""
    value_type = type(value)
    # Exact-type checks first: they are what real payloads consist of, and are cheaper
    # than isinstance() against a tuple of types.
    if value_type is str:
        if not value.isascii() and _SURROGATE_RE.search(value) is not None:
            raise _DataProblem(f"the str {_preview(value)} contains {_SURROGATE_PROBLEM}")
        return
    if value_type is int:
        if not -_ALWAYS_WRITABLE_INT < value < _ALWAYS_WRITABLE_INT:
            _check_int_length(value)
        return
    if value_type is bool or value is None:
        return
    if value_type is dict or (value_type is not list and isinstance(value, dict)):
        if depth >= MAX_DATA_DEPTH:
            raise _DataProblem(_TOO_DEEP_PROBLEM)
        key: object = None
        try:
            for key, item in value.items():
                if type(key) is not str or not key.isascii():
                    _check_object_key(key)
                _check_json_value(item, depth + 1)
        except _DataProblem as problem:
            problem.path.append(f"[{_preview(key)}]" if isinstance(key, str) else "")
            problem.container_ids.append(id(value))
            raise
        return
    if value_type is list or value_type is tuple or isinstance(value, (list, tuple)):
        if depth >= MAX_DATA_DEPTH:
            raise _DataProblem(_TOO_DEEP_PROBLEM)
        index = 0
        try:
            for index, item in enumerate(value):  # noqa: B007
                _check_json_value(item, depth + 1)
        except _DataProblem as problem:
            problem.path.append(f"[{index}]")
            problem.container_ids.append(id(value))
            raise
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _DataProblem(
                f"the float {value!r} cannot be written as JSON; use None or a str instead"
            )
        return
    if isinstance(value, (str, int)):  # subclasses, e.g. enum.IntEnum members
        if isinstance(value, str) and _SURROGATE_RE.search(value) is not None:
            raise _DataProblem(f"the str {_preview(value)} contains {_SURROGATE_PROBLEM}")
        if isinstance(value, int) and not -_ALWAYS_WRITABLE_INT < value < _ALWAYS_WRITABLE_INT:
            _check_int_length(value)
        return
    if isinstance(value, (bytes, bytearray)):
        raise _DataProblem(
            "bytes are only allowed as the whole data (written as data_base64); "
            "base64-encode nested binary into a str yourself"
        )
    type_name = value_type.__name__
    hint = _TYPE_HINTS.get(type_name, "convert it to dict, list, str, int, float, bool or None")
    raise _DataProblem(f"a value of type {type_name} is not a JSON value; {hint}")


# Ints within this bound pass the fast check; others take the full one.
_FAST_INT_BOUND = 2**63

# Python writes ints as text only up to sys.get_int_max_str_digits() digits (4300 by
# default, 0 for no limit, never below 640): json.dumps of a longer one raises ValueError.
# Ints of fewer than 640 digits are always writable; longer ones are checked against the
# interpreter's limit at construction, so that to_json() cannot fail on them later.
_ALWAYS_WRITABLE_INT = 10**639
_get_int_digits_limit: Callable[[], int] = getattr(sys, "get_int_max_str_digits", lambda: 0)
_int_bounds: dict[int, int] = {}  # limit -> 10**limit, the first int too long to write


def _check_int_length(value: int) -> None:
    limit = _get_int_digits_limit()
    if limit <= 0:
        return
    bound = _int_bounds.get(limit)
    if bound is None:
        bound = _int_bounds[limit] = 10**limit
    if -bound < value < bound:
        return
    digits = int(abs(value).bit_length() * math.log10(2))  # within one of the true count
    raise _DataProblem(
        f"an int of about {digits} digits is over Python's limit of {limit} digits for "
        "writing ints as text (sys.get_int_max_str_digits()), so it cannot be written as "
        "JSON; send it as a str"
    )


def _is_plain_json(value: Any, depth: int) -> bool:
    """True when ``value`` surely passes :func:`_check_json_value`, without a call per member.

    It accepts only what real payloads are made of: dicts with ASCII str keys, lists, ASCII
    strs (which cannot hold a surrogate), ints of up to 63 bits, finite floats, bools and
    None. ``False`` says nothing: the full check then decides, and explains.
    """
    if depth >= MAX_DATA_DEPTH:
        return False
    if type(value) is dict:
        items: Any = value.values()
        # ASCII str keys (a str subclass is a str key) cannot hold a surrogate. One join
        # checks them all in C; it refuses a key of any other type.
        try:
            if not "".join(value).isascii():
                return False
        except TypeError:
            return False
    elif type(value) is list:
        items = value
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False
        elif kind is int:
            if not -_FAST_INT_BOUND < item < _FAST_INT_BOUND:
                return False
        elif kind is dict or kind is list:
            if not _is_plain_json(item, depth + 1):
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is not bool and item is not None:
            return False
    return True


def _check_data(data: object) -> None:
    try:
        if _is_plain_json(data, 0):
            return
        _check_json_value(data, 0)
    except RecursionError:
        # Within MAX_DATA_DEPTH, but the caller's own stack was already nearly full.
        raise InvalidEventError("data", _NO_STACK_LEFT_PROBLEM) from None
    except _DataProblem as problem:
        steps = problem.path[::-1]
        if len(steps) > 12:  # a path 200 levels deep says nothing a shorter one does not
            steps = [*steps[:6], f"...({len(steps) - 8} levels)...", *steps[-2:]]
        text = problem.problem
        ids = problem.container_ids
        if text is _TOO_DEEP_PROBLEM and len(set(ids)) < len(ids):
            text = "a container contains itself (a circular reference); JSON cannot express that"
        raise InvalidEventError("data", f"at data{''.join(steps)}: {text}") from None


def format_rfc3339(moment: datetime) -> str:
    """Write a timezone-aware datetime as RFC 3339 (``Z`` for UTC, else ``+HH:MM``).

    An offset that is not a whole number of minutes (RFC 3339 cannot express it) is
    converted to UTC first; the instant is unchanged.
    """
    return _normalise_time(moment)[1]


def parse_rfc3339(text: object) -> datetime:
    """Read an RFC 3339 timestamp into a timezone-aware datetime.

    Accepts ``T``/``t`` between date and time, ``Z``/``z`` or ``+HH:MM``/``-HH:MM`` offsets,
    and fractional seconds of any length (truncated to microseconds). Anything else, leap
    seconds included (``datetime`` cannot hold second 60), raises
    :class:`~cellos_sink_jetstream.InvalidEventError` for ``time``.
    """
    return _read_rfc3339(text)[0]


def _read_rfc3339(text: object) -> tuple[datetime, str]:
    """:func:`parse_rfc3339`, and the text :func:`format_rfc3339` writes for the result.

    ``from_dict`` needs both; writing the text from the match costs a fraction of
    formatting the datetime again (``isoformat`` is slow on aware datetimes).
    """
    if not isinstance(text, str):
        raise InvalidEventError("time", f"must be an RFC 3339 str, got {type(text).__name__}")
    size = len(text)
    if (
        # YYYY-MM-DDTHH:MM:SS.ffffff then +00:00 or Z: what Python writes for UTC with
        # microseconds, the most common form by far. Only the digits are left unchecked,
        # and fromisoformat reads exactly ASCII digits at those places: what it reads here
        # is what the regex below accepts (tests/test_event.py holds it to that).
        ((size == 32 and text[26:] == "+00:00") or (size == 27 and text[26] == "Z"))
        and text[19] == "."
        and text[16] == ":"
        and text[13] == ":"
        and text[10] == "T"
        and text[7] == "-"
        and text[4] == "-"
        and _FROMISOFORMAT_READS_RFC3339
    ):
        try:
            moment = _fromisoformat(text)
        except ValueError:  # a month 13, say: the long way explains
            pass
        else:
            if text[20:26] != "000000":  # else format_rfc3339 leaves the fraction out
                return moment, text[:26] + "Z"
    match = _rfc3339_fullmatch(text)
    if match is None:
        raise InvalidEventError(
            "time",
            f"{_preview(text)} is not an RFC 3339 timestamp; expected e.g. "
            "'2024-05-01T12:30:00Z' or '2024-05-01T14:30:00.123+02:00'",
        )
    second, fraction, offset = match.groups()
    if second == "60":
        raise InvalidEventError(
            "time", f"{_preview(text)} is a leap second, which Python datetimes cannot hold"
        )
    zero_offset = offset in _ZERO_OFFSETS
    # Two digits each (the regex): comparing the strs compares the numbers.
    if not zero_offset and (offset[1:3] > "23" or offset[4:] > "59"):
        raise InvalidEventError("time", f"{_preview(text)} has an offset outside -23:59..+23:59")
    # What format_rfc3339 writes: the date and time as given (fixed widths, ASCII digits),
    # the microseconds unless zero, "Z" for a zero offset (which both readers below give
    # timezone.utc), else the offset as given.
    if fraction is None or (len(fraction) == 7 and fraction != ".000000"):
        written = text[: len(text) - len(offset)]
    else:
        micro = fraction[1:7].ljust(6, "0")
        written = text[:19] if micro == "000000" else f"{text[:19]}.{micro}"
    if text[10] == "t":
        written = f"{written[:10]}T{written[11:]}"
    written += "Z" if zero_offset else offset
    if _FROMISOFORMAT_READS_RFC3339:
        # The checks above decide what is accepted; this only reads it, in C (a fifth of
        # the time). What it refuses (a day past the month's end, a lower-case "t" or "z")
        # goes the long way below, for the precise error.
        try:
            return datetime.fromisoformat(text), written
        except ValueError:
            pass
    tz = timezone.utc
    if not zero_offset:
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:]))
        tz = timezone(-delta if offset[0] == "-" else delta)
    microsecond = int(fraction[1:7].ljust(6, "0")) if fraction else 0
    try:
        moment = datetime(
            int(text[:4]), int(text[5:7]), int(text[8:10]),
            int(text[11:13]), int(text[14:16]), int(second),
            microsecond, tzinfo=tz,
        )  # fmt: skip
    except ValueError as exc:
        raise InvalidEventError(
            "time", f"{_preview(text)} is not a valid date/time: {exc}"
        ) from None
    return moment, written


def _normalise_time(moment: object) -> tuple[datetime, str]:
    """Return ``moment`` with a fixed-offset tzinfo, and its RFC 3339 text.

    Pinning the tzinfo to the fixed offset it has at this instant matters for equality:
    aware datetimes in zoneinfo zones compare unequal to every other zone during a DST
    fold, which would make an event unequal to its own round trip.
    """
    if not isinstance(moment, datetime):
        raise InvalidEventError(
            "time", f"must be a timezone-aware datetime, got {type(moment).__name__}"
        )
    # isoformat() ends in "+00:00" for UTC; RFC 3339 consumers expect the shorter "Z".
    if moment.tzinfo is timezone.utc:  # datetime.now(timezone.utc): skip the rest
        return moment, moment.isoformat()[:-6] + "Z"
    offset = moment.utcoffset()
    if offset is None:
        raise InvalidEventError("time", _NAIVE_TIME_PROBLEM)
    if offset.seconds % 60 or offset.microseconds:  # RFC 3339 offsets are whole minutes
        try:
            moment = moment.astimezone(timezone.utc)
        except OverflowError:
            raise InvalidEventError(
                "time",
                f"{moment!r} has an offset that is not whole minutes and is too close to "
                "the ends of the datetime range to be converted to UTC",
            ) from None
    elif not offset:
        moment = moment.replace(tzinfo=timezone.utc)
    elif type(moment.tzinfo) is not timezone:
        moment = moment.replace(tzinfo=timezone(offset))
    else:
        return moment, moment.isoformat()
    return _normalise_time(moment)


class _ReadOnlyExtensions(Mapping[str, ExtensionValue]):
    """An immutable, hashable, picklable mapping of extension name to value.

    Unlike ``types.MappingProxyType`` it survives ``copy.deepcopy`` and ``pickle`` (and so
    ``dataclasses.asdict`` and multiprocessing).
    """

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, ExtensionValue]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> ExtensionValue:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ReadOnlyExtensions):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)

    def __reduce__(self) -> tuple[type[_ReadOnlyExtensions], tuple[dict[str, ExtensionValue]]]:
        return (type(self), (self._items,))


_NO_EXTENSIONS = _ReadOnlyExtensions({})


def _items_of(extensions: Mapping[str, ExtensionValue]) -> dict[str, ExtensionValue]:
    """An event's extensions as a dict: its own (not to be changed), read without a copy."""
    if isinstance(extensions, _ReadOnlyExtensions):
        return extensions._items
    return dict(extensions)  # an event built in some way around __post_init__


def _extensions_json(extensions: dict[str, ExtensionValue]) -> str:
    """The structured JSON members of validated ``extensions``: ``,"name":value`` each."""
    written = ""
    for name, value in extensions.items():
        if isinstance(value, str):
            value_json = _json_str(value)
        elif isinstance(value, bool):
            value_json = "true" if value else "false"
        else:
            value_json = int.__repr__(value)  # what json writes for an int (subclass)
        # A valid name is plain ASCII that JSON writes as it is; a str subclass is written
        # by its str value, as json would.
        name_json = f'"{name}"' if type(name) is str else _json_str(name)
        written += f",{name_json}:{value_json}"
    return written


def _plain_head(
    event_id: str,
    source: str,
    kind: str,
    *,
    subject: str | None,
    time_text: str | None,
    datacontenttype: str | None,
    dataschema: str | None,
) -> str:
    """The structured JSON object's first members, from plain strs.

    Plain: exact strs of printable ASCII without '"' or backslash, which JSON writes as they
    are between quotes (the caller checked).
    """
    head = f'{{"specversion":"1.0","id":"{event_id}","source":"{source}","type":"{kind}"'
    if subject is not None:
        head += f',"subject":"{subject}"'
    if time_text is not None:
        head += f',"time":"{time_text}"'
    if datacontenttype is not None:
        head += f',"datacontenttype":"{datacontenttype}"'
    if dataschema is not None:
        head += f',"dataschema":"{dataschema}"'
    return head


def _escaped_head(event: CloudEventV1, time_text: str | None) -> str:
    """The structured JSON object's first members, each str escaped as :mod:`json` does.

    ``time_text``: what :func:`format_rfc3339` writes for ``event.time``.
    """
    head = (
        f'{{"specversion":"1.0","id":{_json_str(event.id)},'
        f'"source":{_json_str(event.source)},"type":{_json_str(event.type)}'
    )
    if event.subject is not None:
        head += f',"subject":{_json_str(event.subject)}'
    if time_text is not None:
        head += f',"time":"{time_text}"'
    if event.datacontenttype is not None:
        head += f',"datacontenttype":{_json_str(event.datacontenttype)}'
    if event.dataschema is not None:
        head += f',"dataschema":{_json_str(event.dataschema)}'
    return head


@dataclass(frozen=True)
class CloudEventV1:
    """A validated, immutable CloudEvents 1.0 event.

    Every attribute is checked in the constructor, which raises
    :class:`~cellos_sink_jetstream.InvalidEventError` naming the offending attribute, so an
    existing event can always be serialised with :meth:`to_json`.

    ``data`` is any JSON value (``dict`` with ``str`` keys, ``list``/``tuple``, ``str``,
    ``int``, finite ``float``, ``bool``; ``None`` means "no data"), or ``bytes`` for a binary
    payload, written as ``data_base64``. ``data`` is *not* copied: the event keeps a
    reference, so do not mutate it after construction (a later change that makes it
    unserialisable surfaces as ``InvalidEventError`` from :meth:`to_json`). ``bytearray`` is
    copied to ``bytes``. Tuples are written as JSON arrays and read back as lists, so an
    event whose data holds tuples is not equal to its own round trip.

    ``time`` must be timezone-aware; it is stored with a fixed-offset ``datetime.timezone``
    (UTC when the offset is not whole minutes), the same instant the caller passed.

    ``extensions`` is stored as a read-only copy. Names are 1-20 characters of ``a-z0-9``;
    values are ``str``, ``bool`` or ``int`` in the 32-bit signed range.

    Events are hashable by ``(source, id)`` (the CloudEvents identity), even when ``data``
    is a dict.
    """

    id: str
    source: str
    type: str
    specversion: str = SPECVERSION
    subject: str | None = None
    time: datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Any = None
    extensions: Mapping[str, ExtensionValue] = _NO_EXTENSIONS
    # The structured JSON object but its data member and closing brace, written once here
    # from the immutable attributes, so to_json() has only data left to write. Data is
    # written at each to_json(): the caller owns it, and a change that makes it unwritable
    # must be refused then, not sent as it was.
    _json_head: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate every attribute and write the structured JSON of all but ``data``."""
        self._build(None)

    def _build(self, time_text: str | None) -> None:
        """``__post_init__``, given the text :func:`format_rfc3339` writes for ``time`` if known.

        Runs for every event a caller builds, so the common case of each check (a
        non-empty, printable ASCII str) is tested inline; anything else goes to the checker,
        which decides and explains.
        """
        fields = self.__dict__  # frozen: set through the instance dict, as __init__ does
        if self.specversion != SPECVERSION:
            raise InvalidEventError(
                "specversion",
                f"{_show(self.specversion)} is not supported; only CloudEvents {SPECVERSION!r} is",
            )
        event_id, source, kind = self.id, self.source, self.type
        subject, datacontenttype, dataschema = self.subject, self.datacontenttype, self.dataschema
        # The common case first, all at once: every str attribute an exact, non-empty str,
        # of printable ASCII together. JSON writes such a str as it is between quotes,
        # unless it holds '"' or '\\': then "plain" is False, and the head is escaped.
        plain = (
            type(event_id) is str
            and 0 < len(event_id) <= MAX_ID_LENGTH
            and event_id[0] != " "  # the only printable ASCII whitespace
            and event_id[-1] != " "
            and type(source) is str
            and source != ""
            and type(kind) is str
            and kind != ""
            and (subject is None or (type(subject) is str and subject != ""))
            and (
                datacontenttype is None or (type(datacontenttype) is str and datacontenttype != "")
            )
            and (dataschema is None or (type(dataschema) is str and dataschema != ""))
        )
        if plain:
            joined = (
                f"{event_id}{source}{kind}{subject or ''}{datacontenttype or ''}{dataschema or ''}"
            )
            checked = joined.isascii() and joined.isprintable()
            plain = checked and '"' not in joined and "\\" not in joined
        else:
            checked = False
        if not checked:  # the checkers decide, and explain, in the order of the attributes
            _check_id(event_id)
            _check_string("source", source, required=True)
            _check_string("type", kind, required=True)
            if subject is not None:
                _check_string("subject", subject, required=False)
        moment = self.time
        if moment is not None and time_text is None:
            normalised, time_text = _normalise_time(moment)
            if normalised is not moment:
                fields["time"] = normalised
        if not checked:
            if datacontenttype is not None:
                _check_string("datacontenttype", datacontenttype, required=False)
            if dataschema is not None:
                _check_string("dataschema", dataschema, required=False)

        extensions = self.extensions
        # An extensions object taken from another event (dataclasses.replace) is already
        # valid and immutable.
        if type(extensions) is _ReadOnlyExtensions:
            extension_items = extensions._items
        else:
            extension_items = _check_extensions(extensions)
            fields["extensions"] = (
                _ReadOnlyExtensions(extension_items) if extension_items else _NO_EXTENSIONS
            )

        data = self.data
        if data is not None:
            if isinstance(data, (bytes, bytearray)):
                if type(data) is not bytes:
                    fields["data"] = bytes(data)
            else:
                _check_data(data)

        if plain:
            head = _plain_head(
                event_id,
                source,
                kind,
                subject=subject,
                time_text=time_text,
                datacontenttype=datacontenttype,
                dataschema=dataschema,
            )
        else:
            head = _escaped_head(self, time_text)
        if extension_items:
            head += _extensions_json(extension_items)
        fields["_json_head"] = head

    def __hash__(self) -> int:
        return hash((self.source, self.id))

    @classmethod
    def create(
        cls,
        type: str,
        source: str,
        data: Any = None,
        *,
        id: str | None = None,
        time: datetime | None = None,
        subject: str | None = None,
        datacontenttype: str | None = None,
        dataschema: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
    ) -> CloudEventV1:
        """Build an event, filling ``id`` with a random UUID and ``time`` with now (UTC)."""
        return cls._assemble(
            {
                "id": _random_uuid4() if id is None else id,
                "source": source,
                "type": type,
                "specversion": SPECVERSION,
                "subject": subject,
                "time": datetime.now(timezone.utc) if time is None else time,
                "datacontenttype": datacontenttype,
                "dataschema": dataschema,
                "data": data,
                "extensions": _NO_EXTENSIONS if extensions is None else extensions,
            },
            None,
        )

    @classmethod
    def _assemble(cls, fields: dict[str, Any], time_text: str | None) -> CloudEventV1:
        """``cls(**fields)`` with every field given, validated by the same ``_build``.

        The dataclass's generated ``__init__`` sets each field through
        ``object.__setattr__`` (the class is frozen): a fifth of the cost of building a
        typical event. Filling the new instance's ``__dict__`` at once is equivalent.
        ``time_text``: what :func:`format_rfc3339` writes for ``fields["time"]``, if known.
        """
        if cls is not CloudEventV1:  # a subclass may have an __init__ of its own
            return cls(**fields)
        event = object.__new__(cls)
        event.__dict__.update(fields)
        event._build(time_text)
        return event

    def _with_extensions(self, added: Mapping[str, ExtensionValue]) -> CloudEventV1:
        """A copy with the extensions ``added`` (new names, or new values of old ones).

        Equal to ``dataclasses.replace(self, extensions={**self.extensions, **added})``, but
        only ``added`` is validated: the rest of the event was when it was built. The
        sink's trace context uses it for every event emitted inside a span.
        """
        checked = _check_extensions(added)
        if type(self) is not CloudEventV1 or not checked:
            return dataclasses.replace(self, extensions={**self.extensions, **checked})
        event = object.__new__(CloudEventV1)
        fields = event.__dict__
        fields.update(self.__dict__)
        before = _items_of(self.extensions)
        merged = {**before, **checked}
        fields["extensions"] = _ReadOnlyExtensions(merged)
        # The head ends with the extensions' members (_build writes them last).
        head = self._json_head
        attributes_end = len(head) - len(_extensions_json(before))
        fields["_json_head"] = head[:attributes_end] + _extensions_json(merged)
        return event

    def to_json(self) -> bytes:
        """Serialise as structured-mode CloudEvents JSON (``application/cloudevents+json``).

        UTF-8, compact, non-ASCII characters kept as is. Members are ordered specversion,
        id, source, type, optional attributes, extensions, then ``data`` or ``data_base64``.
        """
        data = self.data
        if data is None:
            return (self._json_head + "}").encode("utf-8")
        if isinstance(data, bytes):
            encoded = base64.b64encode(data).decode("ascii")
            return f'{self._json_head},"data_base64":"{encoded}"}}'.encode()
        try:
            return f'{self._json_head},"data":{"".join(_json_chunks(data, 0))}}}'.encode()
        except RecursionError:
            # The data passed its checks: the caller's stack is what is nearly full.
            raise InvalidEventError("data", _NO_STACK_LEFT_PROBLEM) from None
        except (ValueError, TypeError) as exc:
            # Construction checked everything else; what changed since is the caller's
            # doing: data mutated, or Python's limit on int length lowered.
            raise InvalidEventError(
                "data",
                f"could not be written as JSON ({exc}); was it modified after the event was "
                "created (or sys.set_int_max_str_digits() lowered)? Build a new event "
                "instead of mutating data",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the structured JSON object as a new dict.

        ``time`` is an RFC 3339 str and bytes data is a base64 str under ``data_base64``.
        The dict is new, but ``data`` inside it is the event's own object, not a copy.
        """
        structured: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.subject is not None:
            structured["subject"] = self.subject
        if self.time is not None:
            structured["time"] = _normalise_time(self.time)[1]
        if self.datacontenttype is not None:
            structured["datacontenttype"] = self.datacontenttype
        if self.dataschema is not None:
            structured["dataschema"] = self.dataschema
        structured.update(_items_of(self.extensions))
        data = self.data
        if isinstance(data, bytes):
            structured["data_base64"] = base64.b64encode(data).decode("ascii")
        elif data is not None:
            structured["data"] = data
        return structured

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> CloudEventV1:
        """Read an event from its structured JSON object (as :meth:`to_dict` returns it).

        ``time`` must be an RFC 3339 str and ``data_base64`` a base64 str. Unknown members
        become extensions and are validated as such. A member whose value is ``None``
        (JSON null) counts as absent, as the CloudEvents JSON format requires.
        """
        if type(mapping) is dict:
            if cls is CloudEventV1:
                event = _read_common(mapping)
                if event is not None:
                    return event
        elif not isinstance(mapping, Mapping):
            raise InvalidEventError(
                EVENT_ATTRIBUTE,
                f"a structured CloudEvent must be a JSON object, got {type(mapping).__name__}",
            )
        get = mapping.get
        specversion, event_id, source, kind = (
            get("specversion"),
            get("id"),
            get("source"),
            get("type"),
        )
        if specversion is None or event_id is None or source is None or kind is None:
            for required in ("specversion", "id", "source", "type"):
                if get(required) is None:
                    raise InvalidEventError(
                        required,
                        "is missing; every CloudEvent needs specversion, id, source and type",
                    )
        data = get("data")
        data_base64 = get("data_base64")
        if data_base64 is not None:
            if data is not None:
                raise InvalidEventError(
                    "data_base64",
                    "and data are both present; an event carries at most one of them",
                )
            data = _decode_base64(data_base64)
        time = get("time")
        time_text = None
        if time is not None:
            time, time_text = _read_rfc3339(time)
        extensions = {
            name: value
            for name, value in mapping.items()
            if name not in CORE_ATTRIBUTES and value is not None
        }
        return cls._assemble(
            {
                "id": event_id,
                "source": source,
                "type": kind,
                "specversion": specversion,
                "subject": get("subject"),
                "time": time,
                "datacontenttype": get("datacontenttype"),
                "dataschema": get("dataschema"),
                "data": data,
                "extensions": extensions,
            },
            time_text,
        )

    @classmethod
    def from_json(cls, text: bytes | bytearray | memoryview | str) -> CloudEventV1:
        """Read an event from structured-mode CloudEvents JSON (the inverse of :meth:`to_json`).

        ``CloudEventV1.from_json(event.to_json()) == event`` for every event whose data
        uses lists rather than tuples. Invalid JSON, duplicate member names, ``NaN`` or
        ``Infinity`` literals and non-object documents raise
        :class:`~cellos_sink_jetstream.InvalidEventError`.
        """
        if isinstance(text, memoryview):
            text = text.tobytes()
        try:
            parsed = json.loads(
                text,
                object_pairs_hook=_reject_duplicate_members,
                parse_constant=_reject_non_finite,
            )
        except json.JSONDecodeError as exc:
            raise InvalidEventError(
                EVENT_ATTRIBUTE, f"the text is not valid JSON: {_json_error(exc)}"
            ) from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise InvalidEventError(
                EVENT_ATTRIBUTE, f"the text is not valid JSON: {_preview(str(exc), 200)}"
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidEventError(
                EVENT_ATTRIBUTE,
                f"a structured CloudEvent must be a JSON object, got {_json_kind(parsed)}",
            )
        return cls.from_dict(parsed)

    @classmethod
    def from_nats_message(
        cls, headers: Mapping[str, str] | None, body: bytes | bytearray | memoryview | None
    ) -> CloudEventV1:
        """Read an event from a NATS message's headers and body, in either content mode.

        ``None`` headers or body are none (nats-py gives a message without them so); headers
        or a body of another type are an :class:`InvalidEventError`.

        Structured mode (``Content-Type: application/cloudevents+json``, or no ``ce-``
        headers) reads the body as :meth:`from_json` does; binary mode reads the ``ce-``
        headers of the NATS protocol binding and the body as the data. See
        ``cellos_sink_jetstream._binary_mode.from_nats_message`` for the details.
        """
        # Deferred: the binding knows NATS header names; this module stays pure.
        from ._binary_mode import from_nats_message  # noqa: PLC0415

        event = from_nats_message(headers, body)
        return event if type(event) is cls else cls.from_dict(event.to_dict())


def _read_common(mapping: dict[str, Any]) -> CloudEventV1 | None:
    """``CloudEventV1.from_dict(mapping)`` for the common shape of event, else ``None``.

    The common shape: specversion ``"1.0"``; str attributes that are exact strs of
    printable ASCII without '"' or backslash (JSON writes them as they are, so they are
    written with one f-string); extensions of remembered names whose values are such strs,
    bools or 32-bit ints; no ``data_base64``. For anything else this returns ``None`` and
    the full path decides and explains. It refuses only what the full path would refuse
    first, with the same error: an invalid time, then (all else being valid) invalid data.
    tests/test_event.py holds it to the full path.
    """
    get = mapping.get
    specversion = get("specversion")
    event_id = get("id")
    source = get("source")
    kind = get("type")
    subject = get("subject")
    datacontenttype = get("datacontenttype")
    dataschema = get("dataschema")
    if not (
        type(specversion) is str
        and specversion == SPECVERSION
        and type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and event_id[0] != " "  # the only printable ASCII whitespace
        and event_id[-1] != " "
        and type(source) is str
        and source != ""
        and type(kind) is str
        and kind != ""
        and (subject is None or (type(subject) is str and subject != ""))
        and (datacontenttype is None or (type(datacontenttype) is str and datacontenttype != ""))
        and (dataschema is None or (type(dataschema) is str and dataschema != ""))
        and get("data_base64") is None
    ):
        return None
    extension_items: dict[str, ExtensionValue] = {}
    extensions_json = ""
    extension_strings = ""  # checked with the attributes below
    for name in _extension_names(mapping):
        value = mapping[name]
        if value is None:  # JSON null: absent
            continue
        if type(name) is not str or name not in _VALID_EXTENSION_NAMES:
            return None
        value_type = type(value)
        if value_type is str:
            extension_strings += value
            extensions_json += f',"{name}":"{value}"'
        elif value_type is bool:
            extensions_json += f',"{name}":{"true" if value else "false"}'
        elif value_type is int and _INT32_MIN <= value <= _INT32_MAX:
            extensions_json += f',"{name}":{value}'
        else:
            return None
        extension_items[name] = value

    joined = (
        f"{event_id}{source}{kind}{subject or ''}{datacontenttype or ''}{dataschema or ''}"
        f"{extension_strings}"
    )
    if not (joined.isascii() and joined.isprintable()) or '"' in joined or "\\" in joined:
        return None

    time = get("time")
    time_text = None
    if time is not None:
        time, time_text = _read_rfc3339(time)
    data = get("data")
    if data is not None:
        if isinstance(data, (bytes, bytearray)):
            return None
        _check_data(data)

    head = _plain_head(
        event_id,
        source,
        kind,
        subject=subject,
        time_text=time_text,
        datacontenttype=datacontenttype,
        dataschema=dataschema,
    )
    event = object.__new__(CloudEventV1)
    event.__dict__.update(
        {
            "id": event_id,
            "source": source,
            "type": kind,
            "specversion": specversion,
            "subject": subject,
            "time": time,
            "datacontenttype": datacontenttype,
            "dataschema": dataschema,
            "data": data,
            "extensions": _shared_extensions(extensions_json, extension_items),
            "_json_head": head + extensions_json if extensions_json else head,
        }
    )
    return event


def _extension_names(mapping: dict[str, Any]) -> tuple[str, ...]:
    """The members of ``mapping`` that are not core attributes, in its order.

    A producer's events share one shape, so the last shape's answer is kept: comparing
    the key tuples is mostly identity checks of the same interned names.
    """
    keys = tuple(mapping)
    last_keys, last_names = _last_shape
    if keys == last_keys:
        return last_names
    names = tuple(name for name in keys if name not in CORE_ATTRIBUTES)
    _remember_shape((keys, names))
    return names


def _remember_shape(shape: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    global _last_shape  # noqa: PLW0603 -- one atomic assignment; readers see old or new
    _last_shape = shape


_last_shape: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


def _shared_extensions(written: str, items: dict[str, ExtensionValue]) -> _ReadOnlyExtensions:
    """The read-only extensions ``items``, whose JSON members are ``written``, shared.

    Immutable, so events with the same extensions (a producer's tenant id, say) can share
    one object; ``written`` tells them apart (exactly: the strs in it are plain, so it reads
    back as ``items``, and ``1`` and ``true`` differ). The cache is bounded: past the bound
    each event gets its own.
    """
    if not written:
        return _NO_EXTENSIONS
    shared = _SHARED_EXTENSIONS.get(written)
    if shared is None:
        shared = _ReadOnlyExtensions(items)
        if len(_SHARED_EXTENSIONS) < _MAX_SHARED_EXTENSIONS:
            _SHARED_EXTENSIONS[written] = shared
    return shared


_SHARED_EXTENSIONS: dict[str, _ReadOnlyExtensions] = {}
_MAX_SHARED_EXTENSIONS = 256


def _json_error(exc: json.JSONDecodeError) -> str:
    """Where the JSON went wrong, relative to the text a caller sees (one line, usually).

    json counts the trailing newline of a line read from a file as a line of its own, so a
    line cut short would be reported at "line 2 column 1" of a one-line document.
    """
    text = exc.doc.rstrip()
    if exc.pos >= len(text):
        where = "at the end of the text (it is cut short)"
    elif "\n" not in text:
        where = f"at column {exc.colno}"
    else:
        where = f"at line {exc.lineno} column {exc.colno}"
    # json's messages are its own fixed phrases ("Expecting value"), never the input; one
    # of them ends in "at" already ("Invalid control character at").
    message = exc.msg[:100]
    if message.endswith(" at"):
        message = message[: -len(" at")]
    return f"{message} {where}"


def _random_uuid4() -> str:
    """``str(uuid.uuid4())``, in a third of the time (no ``UUID`` object in between).

    The same 122 bits from ``os.urandom``, the version nibble 4 and the RFC 4122 variant.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_NIBBLE[h[16]]}{h[17:20]}-{h[20:]}"


# The variant's two top bits are 10: keep a random nibble's two low bits under them.
_VARIANT_NIBBLE = {f"{n:x}": f"{0x8 | (n & 0x3):x}" for n in range(16)}


def _decode_base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise InvalidEventError("data_base64", f"must be a base64 str, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEventError(
            "data_base64",
            f"{_preview(value)} is not valid base64 (RFC 4648, with padding, no whitespace)",
        ) from None


def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; refusing them means no consumer can see a
    # different id or type than we did.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"duplicate member name {_preview(name)}")
            seen.add(name)
    return obj


def _reject_non_finite(literal: str) -> Any:
    raise ValueError(f"{literal} is not valid JSON")


class SdkEvent(Protocol):
    """An event of the official ``cloudevents`` SDK, as far as :func:`coerce_event` reads it."""

    def get_attributes(self) -> Mapping[str, Any]:
        """The event's context attributes and extensions, by name."""
        ...

    def get_data(self) -> Any:
        """The event's data: ``bytes`` are sent as ``data_base64``."""
        ...


def coerce_event(event: object) -> CloudEventV1:
    """Return ``event`` as a :class:`CloudEventV1`.

    Accepts a :class:`CloudEventV1`, a mapping in structured CloudEvents JSON form, or an
    event of the official ``cloudevents`` SDK (anything with ``get_attributes()`` and
    ``get_data()``: 1.x ``cloudevents.http.CloudEvent``, 2.x ``cloudevents.v1`` and
    ``cloudevents.core`` events). Anything else raises :class:`InvalidEventError`.
    """
    if isinstance(event, CloudEventV1):
        return event
    if isinstance(event, Mapping):
        return CloudEventV1.from_dict(event)
    get_attributes = getattr(event, "get_attributes", None)
    get_data = getattr(event, "get_data", None)
    if callable(get_attributes) and callable(get_data):
        attributes = dict(get_attributes())
        time = attributes.get("time")
        if isinstance(time, datetime):
            attributes["time"] = format_rfc3339(time)
        data = get_data()
        if isinstance(data, (bytes, bytearray)):
            attributes["data_base64"] = base64.b64encode(bytes(data)).decode("ascii")
        elif data is not None:
            attributes["data"] = data
        return CloudEventV1.from_dict(attributes)
    raise InvalidEventError(
        EVENT_ATTRIBUTE,
        f"expected a CloudEventV1, a mapping in CloudEvents JSON form or a cloudevents SDK "
        f"event, got {type(event).__name__}",
    )
