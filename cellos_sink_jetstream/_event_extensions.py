"""Extension attributes: the names and values the event model accepts, and their JSON.

Names are 1-20 characters of ``a-z0-9`` and no core attribute's; values are CloudEvents
String, Boolean or Integer (32-bit). An event keeps them as an immutable
:class:`_ReadOnlyExtensions`.

Pure: part of the event model (``_event.py``), which re-exports the public names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Union

from cellos_sink_jetstream._errors import InvalidEventError
from cellos_sink_jetstream._event_data import _json_str
from cellos_sink_jetstream._event_text import _check_string_chars, _int_shown, _preview

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

#: Type of an extension attribute value: CloudEvents String, Integer or Boolean.
ExtensionValue = Union[str, int, bool]

_EXTENSION_NAME_RE = re.compile(r"[a-z0-9]{1,20}")
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


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


def _extension_places(mapping: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The keys of ``mapping``, and the places among them of the non-core members.

    The names at those places are the extensions, in order: ``mapping``'s own key objects
    (an equal key of another type, a str subclass say, stays what the caller gave). A
    producer's events share one shape, so the last shape's places are kept: comparing the
    key tuples is mostly identity checks of the same interned names.
    """
    keys = tuple(mapping)
    last_keys, places = _last_shape
    if keys != last_keys:
        places = tuple(place for place, name in enumerate(keys) if name not in CORE_ATTRIBUTES)
        _remember_shape((keys, places))
    return keys, places


def _remember_shape(shape: tuple[tuple[str, ...], tuple[int, ...]]) -> None:
    global _last_shape  # noqa: PLW0603 -- one atomic assignment; readers see old or new
    _last_shape = shape


_last_shape: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())


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
