"""CloudEvents binary content mode over NATS, and reading either mode back.

The NATS protocol binding's 1.0.3 draft (the released 1.0.2 has structured mode only):
every attribute, extensions included, is a ``ce-<name>`` header whose value is the
attribute's canonical string, percent-encoded: space, ``"``, ``%`` and everything outside
printable ASCII become ``%XY`` (upper-case hex) of their UTF-8 bytes. The message body is
the event's data alone. A receiver tells the modes apart by ``Content-Type``: one starting
with ``application/cloudevents`` means structured, anything else binary.

Percent-encoded values are printable ASCII without spaces, so every ``ce-`` header is a
safe NATS header by construction; the header block is still built by
:func:`~cellos_sink_jetstream._headers.encode_header_block`, which checks each header.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Optional, Union

from ._errors import _WHOLE_EVENT, InvalidEventError
from ._event import CloudEventV1
from ._headers import HEADER_CONTENT_TYPE, HEADER_MSG_ID, EncodedHeaders, encode_header_block

__all__ = [
    "CE_HEADER_PREFIX",
    "CONTENT_MODES",
    "BinaryEncoder",
    "from_nats_message",
    "is_binary_mode",
    "percent_decode",
    "percent_encode",
]

#: The values of the sink's ``content_mode`` option.
CONTENT_MODES = ("structured", "binary")

#: Prefix of the header of every CloudEvents attribute in binary mode.
CE_HEADER_PREFIX = "ce-"

_STRUCTURED_MEDIA_TYPE = "application/cloudevents"
_JSON = "application/json"
_OCTET_STREAM = "application/octet-stream"
# What may stay as it is: printable ASCII (U+0021-U+007E) except '"' (U+0022) and '%'.
_NEEDS_ENCODING_RE = re.compile(r"[^!#$&-~]+")
# A media type is printable ASCII; spaces only inside (before parameters, say).
_MEDIA_TYPE_RE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
# A value in RFC 7230 quoted-string form, which decoders must accept from older senders.
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


def _percent_escape(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def percent_encode(value: str) -> str:
    """Encode a canonical attribute string as a header value (binding section 3.1.3.2).

    The empty string, which percent-encoding cannot express, becomes ``""`` (an empty
    quoted string, which decoders must unquote).
    """
    if not value:
        return '""'
    return _NEEDS_ENCODING_RE.sub(_percent_escape, value)


def percent_decode(value: str) -> str:
    """Decode a ``ce-`` header value: unquote a quoted string, then one round of ``%XY``.

    Lower-case hex and needlessly encoded characters are accepted; byte sequences that are
    not valid UTF-8 (overlong forms included) raise ``ValueError``.
    """
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _QUOTED_PAIR_RE.sub(r"\1", value[1:-1])
    if "%" not in value:
        return value
    return urllib.parse.unquote_to_bytes(value).decode("utf-8")


def _canonical(value: object) -> str:
    # The CloudEvents type system's canonical strings: Boolean "true"/"false", Integer in
    # decimal; String, URI, URI-reference and Timestamp (RFC 3339) are strings already.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _is_json_media_type(media_type: str) -> bool:
    essence = media_type.split(";", 1)[0].strip().lower()
    return essence in (_JSON, "text/json") or essence.endswith("+json")


def _is_text_media_type(media_type: str) -> bool:
    return media_type.split(";", 1)[0].strip().lower().startswith("text/")


class BinaryEncoder:
    """Builds the headers and body of binary-mode messages, in the caller's thread."""

    def __init__(self, fixed: Mapping[str, str]) -> None:
        """``fixed``: headers every message carries (``Nats-Expected-Stream``, say)."""
        self._fixed = dict(fixed)

    def encode(self, event: CloudEventV1) -> tuple[bytes, EncodedHeaders]:
        """The body and headers of ``event``; ``Nats-Msg-Id`` is its id, as in structured mode.

        Raises:
            InvalidEventError: its ``datacontenttype`` cannot be a ``Content-Type`` header
                (not printable ASCII, or a CloudEvents format, which receivers would take
                for structured mode), or its data is bytes that a receiver could not read
                under that media type (not JSON under a JSON type, not UTF-8 under text/*).
        """
        headers = EncodedHeaders(self._fixed)
        headers[HEADER_MSG_ID] = event.id
        attributes = event.to_dict()
        attributes.pop("data", None)
        attributes.pop("data_base64", None)
        for name, value in attributes.items():
            headers[CE_HEADER_PREFIX + name] = percent_encode(_canonical(value))
        data = event.data
        media_type = event.datacontenttype
        if media_type is not None:
            if _MEDIA_TYPE_RE.fullmatch(media_type) is None:
                raise InvalidEventError(
                    "datacontenttype",
                    f"{media_type!a} cannot be sent as the Content-Type header in binary "
                    "content mode: a media type is printable ASCII without surrounding spaces",
                )
            if media_type.lower().startswith(_STRUCTURED_MEDIA_TYPE):
                raise InvalidEventError(
                    "datacontenttype",
                    f"{media_type!a} in binary content mode would make receivers read the "
                    "message as structured; send this event in structured mode",
                )
            if isinstance(data, bytes):
                _check_readable(data, media_type)
            headers[HEADER_CONTENT_TYPE] = media_type
        elif data is not None:
            headers[HEADER_CONTENT_TYPE] = _OCTET_STREAM if isinstance(data, bytes) else _JSON
        headers.wire = encode_header_block(dict(headers))
        return _body(data, media_type), headers


def _check_readable(data: bytes, media_type: str) -> None:
    # Sent as the body as it is; a receiver (from_nats_message, tail) reads the body by its
    # media type, so what it could not read would be stored and never read back.
    if _is_json_media_type(media_type):
        try:
            json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise InvalidEventError(
                "data",
                f"bytes data that is not valid JSON cannot be sent in binary content mode "
                f"under datacontenttype {media_type!a} (receivers read it as JSON): send "
                "valid JSON or use another media type, e.g. application/octet-stream",
            ) from None
    elif _is_text_media_type(media_type):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEventError(
                "data",
                f"bytes data that is not UTF-8 cannot be sent in binary content mode under "
                f"datacontenttype {media_type!a} (receivers read it as UTF-8 text): encode "
                "the text as UTF-8 or use another media type, e.g. application/octet-stream",
            ) from None


def _body(data: Any, media_type: Optional[str]) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and media_type is not None and not _is_json_media_type(media_type):
        return data.encode("utf-8")  # text under its own media type, not a JSON string
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def is_binary_mode(headers: Optional[Mapping[str, str]]) -> bool:
    """Whether a NATS message with these headers carries a binary-mode CloudEvent."""
    return _is_binary(_by_lower_name(headers))


def _by_lower_name(headers: Optional[Mapping[str, str]]) -> dict[str, str]:
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidEventError(
            _WHOLE_EVENT,
            f"the headers must be a mapping of names to values (or None), got {_kind(headers)}",
        )
    by_name: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidEventError(
                _WHOLE_EVENT,
                f"header names and values must be str, got {_kind(name)}: {_kind(value)}",
            )
        # NATS header names are case-insensitive (ADR-4).
        by_name[name.lower()] = value
    return by_name


def _kind(value: object) -> str:
    # The type only: a value read off the wire is not repeated into an error message.
    return type(value).__name__


def _is_binary(by_name: Mapping[str, str]) -> bool:
    content_type = by_name.get(HEADER_CONTENT_TYPE.lower())
    if content_type is not None and content_type.strip().lower().startswith(_STRUCTURED_MEDIA_TYPE):
        return False
    return CE_HEADER_PREFIX + "specversion" in by_name


def from_nats_message(
    headers: Optional[Mapping[str, str]], body: Union[bytes, bytearray, memoryview, None]
) -> CloudEventV1:
    """Read an event from a NATS message in either content mode.

    Structured when ``Content-Type`` starts with ``application/cloudevents`` or when there
    is no ``ce-specversion`` header (messages without headers included); binary otherwise.
    In binary mode, extension values come back as strings (headers carry no type), and
    data is read by its media type (``datacontenttype``, else ``Content-Type``): JSON
    media types as the JSON value, ``text/*`` as ``str``, anything else as ``bytes``; an
    empty body is no data, and so is ``None`` (nats-py's ``js.get_msg()`` gives an empty
    body as ``None``).

    Raises:
        InvalidEventError: the message is not a valid CloudEvent in either mode, or the
            headers or body are not of the types above.
    """
    if body is None:
        body = b""
    elif isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body)
    else:
        raise InvalidEventError(
            _WHOLE_EVENT, f"the body must be bytes (or None for none), got {_kind(body)}"
        )
    by_name = _by_lower_name(headers)
    if not _is_binary(by_name):
        return CloudEventV1.from_json(body)
    content_type = by_name.get(HEADER_CONTENT_TYPE.lower())
    attributes: dict[str, Any] = {}
    for name, value in by_name.items():
        if not name.startswith(CE_HEADER_PREFIX):
            continue
        attribute = name[len(CE_HEADER_PREFIX) :]
        if attribute in ("data", "data_base64"):
            raise InvalidEventError(
                attribute, f"the header {name} is not an attribute; data travels in the body"
            )
        try:
            attributes[attribute] = percent_decode(value)
        except ValueError:
            raise InvalidEventError(
                attribute, f"the header {name} is not valid percent-encoded UTF-8"
            ) from None
    media_type = attributes.get("datacontenttype") or content_type
    attributes["data"] = _data(body, media_type)
    return CloudEventV1.from_dict(attributes)


def _data(body: bytes, media_type: Optional[str]) -> Any:
    if not body:
        return None
    if media_type is None:
        return body
    if _is_json_media_type(media_type):
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise InvalidEventError(
                "data", f"the body is not valid JSON although the media type is {media_type!a}"
            ) from None
    if _is_text_media_type(media_type):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEventError(
                "data", f"the body is not UTF-8 text although the media type is {media_type!a}"
            ) from None
    return body


def _reject_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not valid JSON")
