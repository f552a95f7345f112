"""RFC 3339 time for the event model: reading it, writing it, and its normal form.

An event's ``time`` is stored with a fixed-offset ``datetime.timezone`` (UTC when the
offset is not whole minutes), and written with ``Z`` for UTC.

Pure: part of the event model (``_event.py``), which re-exports the public names.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone

from cellos_sink_jetstream._errors import InvalidEventError
from cellos_sink_jetstream._event_text import _preview

_NAIVE_TIME_PROBLEM = (
    "is a naive datetime (no tzinfo); pass a timezone-aware one, e.g. datetime.now(timezone.utc)"
)

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
        and text[4:20:3] == "--T::."  # the separators at 4, 7, 10, 13, 16 and 19
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
