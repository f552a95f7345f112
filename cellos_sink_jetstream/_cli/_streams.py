"""JetStream streams: staging the development stream, finding one, reading it back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from .._subject import TENANT_ID_PLACEHOLDER
from ._exit_status import CliError
from ._output import PROG, format_duration, plural
from ._target import describe_error

#: The stream that ``dev-server`` and ``demo`` stage, and ``check`` suggests.
DEV_STREAM = "CELLOS"
#: What that stream captures.
DEV_STREAM_SUBJECTS = ("cellos.events.>",)
#: Its duplicate window in seconds; equal to the sink's retry horizon.
RETRY_HORIZON_SECONDS = 120.0
#: Audit floor (FC-74): events must be kept at least this long.
AUDIT_FLOOR_SECONDS = 90 * 86400.0
#: Fewer replicas than this and one lost server can lose or stall the stream.
RECOMMENDED_REPLICAS = 3

_CONSUMER_PREFIX = "cellos_cli_"


def name_of(setting: Any, default: str) -> str:
    """The text of a stream setting: nats-py leaves enums read from the server as str."""
    if setting is None:
        return default
    return str(getattr(setting, "value", setting))


def dev_stream_config(name: str = DEV_STREAM) -> api.StreamConfig:
    """The stream ``dev-server`` and ``demo`` stage: file storage, 2-minute duplicate window."""
    return api.StreamConfig(
        name=name,
        description=f"CloudEvents of cellos supervisors (staged by {PROG})",
        subjects=list(DEV_STREAM_SUBJECTS),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=RETRY_HORIZON_SECONDS,
        num_replicas=1,
    )


async def ensure_stream(
    js: JetStreamContext, config: api.StreamConfig
) -> tuple[api.StreamInfo, bool]:
    """Return the stream named in ``config`` and whether it was created now.

    An existing stream of that name is kept as it is.
    """
    assert config.name is not None
    try:
        return await js.stream_info(config.name), False
    except nats.js.errors.NotFoundError:
        pass
    try:
        return await js.add_stream(config), True
    except nats.js.errors.APIError as exc:
        raise CliError(f"could not create stream {config.name}: {describe_error(exc)}") from None


async def stream_capturing(js: JetStreamContext, subject: str) -> Optional[str]:
    """Return the name of the stream that captures ``subject``, or ``None``."""
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return None


@dataclass(frozen=True)
class StoredMessage:
    """One message read back from a stream."""

    seq: int
    subject: str
    data: bytes
    stored_at: Optional[datetime]
    headers: Optional[Mapping[str, str]] = None

    @classmethod
    def from_msg(cls, msg: Msg) -> StoredMessage:
        """Take what is printed and checked from a nats-py JetStream message."""
        metadata = msg.metadata
        return cls(metadata.sequence.stream, msg.subject, msg.data, metadata.timestamp, msg.headers)


def _reader_config(subject: Optional[str], start_seq: int) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=f"{_CONSUMER_PREFIX}{uuid.uuid4().hex}",
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start_seq),
        ack_policy=api.AckPolicy.NONE,
        filter_subject=subject,
        mem_storage=True,
        num_replicas=1,
        # Removed by the server if this process dies before deleting it.
        inactive_threshold=30.0,
    )


async def _count_from(js: JetStreamContext, stream: str, subject: Optional[str], seq: int) -> int:
    """How many messages on ``subject`` the stream holds at sequence ``seq`` or later."""
    config = _reader_config(subject, seq)
    info = await js.add_consumer(stream, config)
    with contextlib.suppress(nats.errors.Error):
        await js.delete_consumer(stream, info.name)
    return int(info.num_pending or 0)


async def start_of_last(
    js: JetStreamContext, stream: str, subject: Optional[str], last: int
) -> int:
    """The first sequence from which ``subject`` has exactly its ``last`` newest messages.

    Counting from a sequence is cheap for the server (a consumer's ``num_pending``), so
    this guesses first and falls back to a binary search over the sequence range.
    """
    state = (await js.stream_info(stream)).state
    first, final = max(1, state.first_seq), state.last_seq
    if await _count_from(js, stream, subject, first) <= last:
        return first
    guess = max(first, final - last + 1)
    if await _count_from(js, stream, subject, guess) == last:
        return guess
    low, high = first, final  # count(low) > last; find the largest seq with count >= last
    while low < high:
        middle = (low + high + 1) // 2
        if await _count_from(js, stream, subject, middle) >= last:
            low = middle
        else:
            high = middle - 1
    return low


async def deliver_stored(
    js: JetStreamContext,
    stream: str,
    subject: Optional[str],
    start_seq: int,
    on_message: Callable[[StoredMessage], None],
    *,
    follow: bool = False,
    stop: Optional[threading.Event] = None,
    batch: int = 256,
) -> int:
    """Pass every stored message from ``start_seq`` on to ``on_message``, oldest first.

    Reads with an ephemeral, unacknowledged, in-memory pull consumer and returns once it
    has caught up with what the stream held when it started (with ``follow``: once
    ``stop`` is set, checked between fetches). Returns how many messages were delivered.
    """
    stop = stop or threading.Event()
    config = _reader_config(subject, start_seq)
    assert config.name is not None
    info = await js.add_consumer(stream, config)
    remaining = int(info.num_pending or 0)
    subscription = await js.pull_subscribe_bind(consumer=config.name, stream=stream)
    delivered = 0
    try:
        while (remaining > 0 or follow) and not stop.is_set():
            wanted = min(batch, remaining) if remaining > 0 else batch
            try:
                messages = await subscription.fetch(wanted, timeout=0.5 if follow else 5.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # nats-py raises either, depending on where in fetch() time ran out.
                if follow:
                    continue
                break  # messages were deleted while reading: nothing more to come
            for message in messages:
                on_message(StoredMessage.from_msg(message))
            delivered += len(messages)
            remaining = int(messages[-1].metadata.num_pending)
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, config.name)
    return delivered


def capture_pattern(template: str) -> str:
    """The subject pattern a stream needs to capture every subject of ``template``.

    Each token holding ``{tenantId}`` becomes ``*``: ``cellos.events.{tenantId}.lifecycle``
    gives ``cellos.events.*.lifecycle``.
    """
    return ".".join(
        "*" if TENANT_ID_PLACEHOLDER in token else token for token in template.split(".")
    )


def describe_stream(info: api.StreamInfo) -> str:
    config, state = info.config, info.state
    storage = name_of(config.storage, "file")
    return (
        f"subjects {', '.join(config.subjects or [])}; {storage} storage, "
        f"{plural(config.num_replicas or 1, 'replica')}, duplicate window "
        f"{format_duration(float(config.duplicate_window or 0))}, max age "
        f"{format_duration(float(config.max_age or 0))}, discard "
        f"{name_of(config.discard, 'old')}; "
        f"{plural(state.messages, 'event')} stored"
    )
