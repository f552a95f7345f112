"""Reading the acks of the sink's own publishes past nats-py's general protocol parser.

nats-py's parser matches every frame against regular expressions and hands each message
to a coroutine: 1.6-2.2 µs per ack on the loop thread, the sink's bottleneck, against
1.0-1.6 µs here (benchmarks/README.md).
Nearly everything the server sends the sink is one kind of frame, ``MSG <subject> <sid>
<size>`` for a subscription whose messages go straight to a handler (the acks).
:class:`DirectReplyParser` reads the run of those frames at the head of each read itself
and leaves the first frame it does not take, with everything after it, to nats-py's
parser: any other operation, a message with a reply subject or headers (a status), one
for another subscription, or anything it does not recognise. nats-py's parser so sees
every other byte exactly as it would have, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable, Optional

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

__all__ = ["Delivered", "DirectHandler", "DirectReplyParser"]

logger = logging.getLogger("cellos_sink_jetstream")

#: What a direct subscription's messages go to: ``handler(subject, payload, status)``, with
#: ``status`` ``None`` (the frames this parser takes carry no headers).
DirectHandler = Callable[[bytes, bytes, Optional[str]], None]

#: Told, once per read, how many messages and payload bytes the parser delivered itself.
Delivered = Callable[[int, int], None]

_MSG = b"MSG "
_CRLF = b"\r\n"
# Most bytes of an unfinished frame this parser keeps (and copies again on each read)
# before it leaves the frame to nats-py's parser, which appends to its buffer in place.
# Acks are tens of bytes; only a frame this large (nothing the sink expects) goes there.
_MOST_BYTES_KEPT = 64 * 1024


class DirectReplyParser(Parser):
    """nats-py's parser, reading the frames of direct subscriptions itself (see the module)."""

    def __init__(
        self, nc: Any, handlers: Mapping[int, DirectHandler], delivered: Delivered
    ) -> None:
        """Parse for ``nc``; messages of a sid in ``handlers`` go to its handler.

        ``delivered(messages, payload_bytes)`` hears, after each read, what went there.
        """
        super().__init__(nc)
        # Shared with the client, which adds a handler per direct subscription.
        self._handlers = handlers
        self._delivered = delivered

    async def parse(self, data: bytes = b"") -> None:
        """Take the frames of ``data`` (after what an earlier call left unfinished)."""
        if self.state != AWAITING_CONTROL_LINE or len(self.buf) > _MOST_BYTES_KEPT:
            # nats-py's parser stopped inside a message's payload, or holds a long
            # unfinished frame: it reads on.
            await super().parse(data)
            return
        if self.buf:
            data = bytes(self.buf) + data
            self.buf.clear()
        stop, unfinished = self._read_direct_frames(data)
        if stop == len(data):
            return
        if unfinished and len(data) - stop <= _MOST_BYTES_KEPT:
            # The head of a direct frame whose end is still on its way: wait for it here,
            # in the state nats-py's parser would have left it (no control line taken).
            self.buf.extend(data[stop:])
        else:
            await super().parse(data[stop:])

    def _read_direct_frames(self, data: bytes) -> tuple[int, bool]:
        """Deliver the leading direct frames of ``data``.

        Returns where the first frame not delivered starts, and whether that frame is one
        this parser would take once the rest of it has arrived.
        """
        handlers = self._handlers
        position, size = 0, len(data)
        messages = payload_bytes = 0
        try:
            while position < size:
                if not data.startswith(_MSG, position):
                    return position, False
                line_end = data.find(_CRLF, position)
                if line_end < 0:
                    return position, True
                fields = data[position + len(_MSG) : line_end].split(b" ")
                if len(fields) != 3:  # a reply subject, or not single spaces: nats-py's
                    return position, False
                subject, sid, length = fields
                if not (sid.isdigit() and length.isdigit()):
                    return position, False
                handler = handlers.get(int(sid))
                if handler is None:
                    return position, False
                start = line_end + len(_CRLF)
                end = start + int(length)
                if end + len(_CRLF) > size:
                    return position, True
                if data[end : end + len(_CRLF)] != _CRLF:
                    return position, False
                try:
                    handler(subject, data[start:end], None)
                except Exception:  # raised into the parser, it would drop the connection
                    logger.exception("handling a reply from NATS failed; ignored")
                messages += 1
                payload_bytes += end - start
                position = end + len(_CRLF)
            return position, False
        finally:
            if messages:
                self._delivered(messages, payload_bytes)
