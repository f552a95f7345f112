"""Publish CloudEvents to NATS JetStream from synchronous Python with one blocking call.

Example::

    from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink

    with JetStreamEventSink.connect(None, "cellos.events.{tenantId}") as sink:
        sink.emit(CloudEventV1(id="evt-1", source="/supervisor", type="cell.started"))

See the README for the breaker, the guarantees and the environment variables.
"""

import logging as _logging

from ._breaker import BreakerState, Connected, Reconnecting
from ._compose import build_primary_event_sink
from ._config import (
    DEFAULT_NATS_URL,
    ENV_CA_FILE,
    ENV_NATS_URL,
    ENV_REQUIRE_JETSTREAM,
    ENV_SPOOL_DIR,
    ENV_SPOOL_MAX_BYTES,
    ENV_USE_NOOP_SINK,
    redact_url,
)
from ._errors import (
    BackpressureError,
    CircuitOpenError,
    ConfigError,
    ConnectError,
    FailureCause,
    InvalidEventError,
    InvalidSubjectError,
    MessageRejectedError,
    NoStreamError,
    PayloadTooLargeError,
    PublishError,
    PublishTimeoutError,
    ReentrantEmitError,
    SinkClosedError,
    SinkError,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
    StreamMismatchError,
)
from ._event import CloudEventV1
from ._noop_sink import NoopEventSink
from ._otel import instrument
from ._retry import with_retry
from ._seam import DeadlineClock, PubAck, Publisher
from ._sink import JetStreamEventSink
from ._sink_protocol import EventSink, SinkStats
from ._spool import DEFAULT_SPOOL_MAX_BYTES, DeadLetter, SpoolingEventSink, SpoolStats
from ._subject import TENANT_ID_DEFAULT_TOKEN, TENANT_ID_PLACEHOLDER, resolve_tenant_subject
from ._version import __version__

# A library leaves handlers to the application; this keeps Python's last-resort handler
# from printing our warnings when the application configured no logging at all.
_logging.getLogger("cellos_sink_jetstream").addHandler(_logging.NullHandler())

__all__ = [
    "DEFAULT_NATS_URL",
    "DEFAULT_SPOOL_MAX_BYTES",
    "ENV_CA_FILE",
    "ENV_NATS_URL",
    "ENV_REQUIRE_JETSTREAM",
    "ENV_SPOOL_DIR",
    "ENV_SPOOL_MAX_BYTES",
    "ENV_USE_NOOP_SINK",
    "TENANT_ID_DEFAULT_TOKEN",
    "TENANT_ID_PLACEHOLDER",
    "BackpressureError",
    "BreakerState",
    "CircuitOpenError",
    "CloudEventV1",
    "ConfigError",
    "ConnectError",
    "Connected",
    "DeadLetter",
    "DeadlineClock",
    "EventSink",
    "FailureCause",
    "InvalidEventError",
    "InvalidSubjectError",
    "JetStreamEventSink",
    "MessageRejectedError",
    "NoStreamError",
    "NoopEventSink",
    "PayloadTooLargeError",
    "PubAck",
    "PublishError",
    "PublishTimeoutError",
    "Publisher",
    "Reconnecting",
    "ReentrantEmitError",
    "SinkClosedError",
    "SinkError",
    "SinkStats",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SpoolStats",
    "SpoolingEventSink",
    "StreamMismatchError",
    "__version__",
    "build_primary_event_sink",
    "instrument",
    "redact_url",
    "resolve_tenant_subject",
    "with_retry",
]
