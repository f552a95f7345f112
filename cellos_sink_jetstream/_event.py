"""The CloudEvents 1.0 event model and its structured-mode JSON form.

:class:`CloudEventV1` validates everything at construction, so an event that exists can
always be written. It writes the JSON of its (immutable) attributes and extensions then, so
:meth:`CloudEventV1.to_json` (called on every emit) only encodes ``data`` with :mod:`json`'s
C encoder and does no checking of its own beyond what :mod:`json` does anyway. ``data``
stays the caller's object and is encoded at each call, so a later change to it is written,
or refused if it made the data unwritable.

The rules it applies live in modules of their own: ``_event_text`` (CloudEvents String,
``id``, previews of values for messages), ``_event_time`` (RFC 3339), ``_event_extensions``
(names, values, the read-only mapping) and ``_event_data`` (JSON data and the encoder).
This module re-exports their public names.

These modules are pure: they know nothing of NATS or asyncio.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from cellos_sink_jetstream._errors import _WHOLE_EVENT, InvalidEventError
from cellos_sink_jetstream._event_data import (
    _NO_STACK_LEFT_PROBLEM,
    MAX_DATA_DEPTH,
    _check_data,
    _is_plain_json,
    _json_chunks,
    _json_str,
)
from cellos_sink_jetstream._event_extensions import (
    _INT32_MAX,
    _INT32_MIN,
    _NO_EXTENSIONS,
    _VALID_EXTENSION_NAMES,
    CORE_ATTRIBUTES,
    ExtensionValue,
    _check_extensions,
    _extension_places,
    _extensions_json,
    _items_of,
    _ReadOnlyExtensions,
    _shared_extensions,
)
from cellos_sink_jetstream._event_ids import random_uuid4
from cellos_sink_jetstream._event_text import (
    MAX_ID_LENGTH,
    _check_id,
    _check_string,
    _preview,
    _show,
)
from cellos_sink_jetstream._event_time import (
    _normalise_time,
    _read_rfc3339,
    format_rfc3339,
    parse_rfc3339,
)

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

#: Value of :attr:`InvalidEventError.attribute <cellos_sink_jetstream.InvalidEventError>`
#: when the problem is the document as a whole (not JSON, not an object), not one attribute.
#: The parentheses keep it from ever colliding with a real extension name.
EVENT_ATTRIBUTE = _WHOLE_EVENT


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
                "id": random_uuid4() if id is None else id,
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
        if type(data) is not dict and isinstance(data, bytes):  # dict: the common case
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
    tests/test_event.py holds it to the full path, each shortcut below included.
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
    keys, places = _extension_places(mapping)
    for place in places:
        name = keys[place]
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
    # Printable ASCII without '"' or backslash: ASCII, then none of the other bytes left
    # (one pass in C; str.isprintable looks each character up in the Unicode database).
    if not joined.isascii() or len(joined.encode().translate(None, _NOT_PLAIN_BYTES)) != len(
        joined
    ):
        return None

    time = get("time")
    time_text = None
    if time is not None:
        time, time_text = _read_rfc3339(time)
    data = get("data")
    if data is not None:
        try:
            plain = _is_plain_json(data, 0)
        except RecursionError:  # _check_data explains
            plain = False
        if not plain:
            if isinstance(data, (bytes, bytearray)):
                return None
            _check_data(data)

    if (
        subject is not None
        and time_text is not None
        and datacontenttype is not None
        and dataschema is None
    ):  # the members events have most often, in one f-string
        head = (
            f'{{"specversion":"1.0","id":"{event_id}","source":"{source}","type":"{kind}",'
            f'"subject":"{subject}","time":"{time_text}","datacontenttype":"{datacontenttype}"'
        )
    else:
        head = _plain_head(
            event_id,
            source,
            kind,
            subject=subject,
            time_text=time_text,
            datacontenttype=datacontenttype,
            dataschema=dataschema,
        )
    event = _new_object(CloudEventV1)
    # The instance's dict, given whole (frozen: as _assemble fills it, but not copied).
    _set_attribute(
        event,
        "__dict__",
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
        },
    )
    return event


_new_object = object.__new__
_set_attribute = object.__setattr__

# The ASCII bytes a plain str must not hold: the controls (what str.isprintable refuses in
# ASCII), and the two that JSON escapes.
_NOT_PLAIN_BYTES = bytes(range(0x20)) + b'\x7f"\\'


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
