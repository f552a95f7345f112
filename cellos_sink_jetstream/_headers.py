"""NATS message headers: the names the sink sets, and their wire encoding, made once.

nats-py encodes a header mapping on every publish, on the event loop; the sink encodes the
fixed part of its headers once (:class:`HeaderTemplate`) and hands the bytes to the
publisher with the mapping (:class:`EncodedHeaders`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "HEADER_CONTENT_TYPE",
    "HEADER_EXPECTED_STREAM",
    "HEADER_MSG_ID",
    "EncodedHeaders",
    "HeaderTemplate",
    "encode_header_block",
]

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EXPECTED_STREAM = "Nats-Expected-Stream"
HEADER_CONTENT_TYPE = "Content-Type"


class EncodedHeaders(dict):  # type: ignore[type-arg]  # dict[str, str] on 3.9 too
    """Message headers that carry their NATS wire encoding, made once by the caller.

    An ordinary mapping to any :class:`Publisher`; :class:`NatsPublisher` writes
    :attr:`wire` as it is instead of encoding the mapping again on the event loop.
    Build them with :class:`HeaderTemplate`.
    """

    __slots__ = ("wire",)

    #: The header block as NATS sends it: ``NATS/1.0\r\n``, one line per header, a blank line.
    wire: bytes


class HeaderTemplate:
    """Fixed headers plus one header whose value changes per message, pre-encoded."""

    def __init__(self, fixed: Mapping[str, str], per_message: str) -> None:
        """Check and encode the fixed part; raise ``ValueError`` for an unsafe header."""
        _check_header(per_message, "x")
        self._fixed = dict(fixed)
        self._per_message = per_message
        self._prefix = f"NATS/1.0\r\n{_header_lines(fixed)}{per_message}: ".encode()

    def fill(self, value: str) -> EncodedHeaders:
        """The headers of one message whose per-message header is ``value``.

        ``value`` is not checked again here, on every publish: the caller guarantees it is
        a valid header value (the sink passes event ids, which the event model checks).
        """
        headers = EncodedHeaders(self._fixed)
        headers[self._per_message] = value
        headers.wire = b"%b%b\r\n\r\n" % (self._prefix, value.encode())
        return headers


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS header block of ``headers``; raise ``ValueError`` for an unsafe header."""
    wire = getattr(headers, "wire", None)
    if isinstance(wire, bytes):
        return wire
    return f"NATS/1.0\r\n{_header_lines(headers)}\r\n".encode()


def _header_lines(headers: Mapping[str, str]) -> str:
    for name, value in headers.items():
        _check_header(name, value)
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def _check_header(name: str, value: str) -> None:
    # What nats-py would refuse (names) or silently rewrite (values: stripped, CR and LF
    # turned into spaces) is refused here, so the bytes sent are the bytes nats-py would
    # send. Anything else, non-ASCII included, is sent as UTF-8, as nats-py does.
    if not _HEADER_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid NATS header name")
    if not value or value != value.strip() or "\r" in value or "\n" in value:
        raise ValueError(f"header {name} cannot carry {value!r}")


_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")  # printable ASCII without space and colon
