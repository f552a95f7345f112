"""An event's ``data``: which JSON values the event model accepts, and the encoder.

:func:`_check_data` refuses, at construction, whatever :mod:`json` could not write (or
would write as something else): non-str keys, NaN and infinities, ints too long for
Python to write, lone surrogates, nesting past :data:`MAX_DATA_DEPTH`, circular data,
nested bytes and other types; :func:`_is_plain_json` is its fast path.
:data:`_json_chunks` is the one C encoder the event model writes with.

Pure: part of the event model (``_event.py``), which re-exports the public names.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from cellos_sink_jetstream._errors import InvalidEventError
from cellos_sink_jetstream._event_text import _preview, _show

#: Deepest nesting of lists/dicts accepted in ``data``; well below the interpreter's
#: recursion limit so neither validation nor :mod:`json` can blow the stack.
MAX_DATA_DEPTH = 200

# A lone surrogate cannot be encoded as UTF-8, so one inside data would only fail later,
# at serialisation time, far from the code that put it there.
_SURROGATE_RE = re.compile("[\\ud800-\\udfff]")


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


# Ints within these bounds pass the fast check; others take the full one.
_FAST_INT_BOUND = 2**63
_FAST_INT_MIN = -_FAST_INT_BOUND  # not negated per int: that builds a new int each time

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
            if not _FAST_INT_MIN < item < _FAST_INT_BOUND:
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
