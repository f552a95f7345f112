"""CloudEvents String rules for the event model, and safe previews of values in messages.

A CloudEvents String must not hold control characters, surrogates or Unicode
noncharacters; ``id`` has limits of its own (it becomes the ``Nats-Msg-Id`` header). The
previews render any value as short, ASCII-only text that is safe to log.

Pure: part of the event model (``_event.py``), which re-exports the public names.
"""

from __future__ import annotations

import math
import re

from cellos_sink_jetstream._errors import InvalidEventError

#: Longest accepted ``id``. It travels in the ``Nats-Msg-Id`` header, which the server keeps
#: in memory for the stream's whole duplicate window.
MAX_ID_LENGTH = 1024

# CloudEvents "String" forbids C0/C1 controls, surrogates and noncharacters. The
# noncharacters are U+FDD0..U+FDEF plus the last two code points of each of the 17 planes.
_PLANE_END_NONCHARACTERS = "".join(
    f"\\U{plane * 0x10000 + 0xFFFE:08x}\\U{plane * 0x10000 + 0xFFFF:08x}" for plane in range(17)
)
_DISALLOWED_CHAR_RE = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef" + _PLANE_END_NONCHARACTERS + "]"
)


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
