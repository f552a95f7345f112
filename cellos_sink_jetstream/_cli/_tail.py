"""``tail``: print the events stored in a stream."""

from __future__ import annotations

import argparse
import json
import threading
from datetime import timezone
from typing import Any, Optional

import nats.js.errors
from nats.aio.client import Client

from .._binary_mode import is_binary_mode
from .._errors import InvalidEventError
from .._event import CloudEventV1
from .._subject import TENANT_ID_PLACEHOLDER
from ._exit_status import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from ._output import PROG, err, out
from ._signals import stop_requested_on_signals
from ._streams import (
    StoredMessage,
    capture_pattern,
    deliver_stored,
    start_of_last,
    stream_capturing,
)
from ._target import describe_error, jetstream, target_from_args, with_nats


def format_stored(message: StoredMessage, *, oneline: bool) -> str:
    """Render a stored message: pretty JSON under a header line, or a single line.

    Events in binary content mode are shown in their structured JSON form.
    """
    body = _structured_body(message)
    stamp = (
        message.stored_at.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        if message.stored_at is not None
        else "?"
    )
    if oneline:
        return f"#{message.seq} {message.subject} {_summarise(body, message.data)}"
    header = f"--- #{message.seq} {message.subject} stored {stamp}"
    if body is None:
        return f"{header}\n{message.data.decode('utf-8', errors='replace')}"
    return f"{header}\n{json.dumps(body, indent=2, ensure_ascii=False)}"


def _structured_body(message: StoredMessage) -> Any:
    if is_binary_mode(message.headers):
        try:
            return CloudEventV1.from_nats_message(message.headers, message.data).to_dict()
        except InvalidEventError:
            return None  # shown raw, as any message that is not a CloudEvent
    try:
        return json.loads(message.data)
    except ValueError:
        return None


def _summarise(body: Any, raw: bytes) -> str:
    if not isinstance(body, dict):
        return f"<not a CloudEvent: {len(raw)} bytes>"
    words = [str(body.get("time", "-")), str(body.get("type", "?")), f"id={body.get('id', '?')}"]
    if body.get("data") is not None:
        words.append(json.dumps(body["data"], ensure_ascii=False, separators=(",", ":")))
    return " ".join(words)


async def _tail(client: Client, args: argparse.Namespace, stop: threading.Event) -> int:
    js = jetstream(client)
    subject: str = args.subject
    subject_filter = None if subject == ">" else subject
    stream: Optional[str] = args.stream or await stream_capturing(js, subject)
    if stream is None:
        raise CliError(f"no JetStream stream captures {subject}; pass --stream NAME")

    def show(message: StoredMessage) -> None:
        out(format_stored(message, oneline=args.oneline))

    last: Optional[int] = args.last
    try:
        start = 1 if last is None else await start_of_last(js, stream, subject_filter, last)
        count = await deliver_stored(
            js, stream, subject_filter, start, show, follow=args.follow, stop=stop
        )
    except nats.js.errors.NotFoundError:
        raise CliError(f"stream {stream} does not exist") from None
    except nats.js.errors.APIError as exc:
        raise CliError(f"cannot read stream {stream}: {describe_error(exc)}") from None
    if stop.is_set():
        return EXIT_INTERRUPTED
    if count == 0:
        err(f"{PROG}: no events on {subject} in stream {stream}")
    return EXIT_OK


def subject_filter_of(subject: str) -> str:
    """The filter ``tail`` reads: a sink template's ``{tenantId}`` tokens become ``*``.

    Raises :class:`CliError` (a usage error) for any other brace, which is no NATS wildcard
    and would match nothing stored by the sink.
    """
    pattern = capture_pattern(subject) if TENANT_ID_PLACEHOLDER in subject else subject
    if "{" in pattern or "}" in pattern:
        raise CliError(
            f"subject filter {subject!r} has braces: only {TENANT_ID_PLACEHOLDER} is "
            f"understood (read as *); use NATS wildcards (* for one token, > for the rest)",
            exit_code=EXIT_USAGE,
        )
    return pattern


def cmd_tail(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    pattern = subject_filter_of(args.subject)
    if pattern != args.subject:
        err(f"{PROG}: reading {pattern} (the template's {TENANT_ID_PLACEHOLDER} as a wildcard)")
        args.subject = pattern
    if args.all:
        args.last = None
    # Ctrl-C sets a flag the read loop checks: asyncio.run's own handling cancels the
    # task, and asyncio.wait_for (inside nats-py's fetch) can lose that cancellation.
    with stop_requested_on_signals() as stop:
        return with_nats(target, lambda client: _tail(client, args, stop))
