"""The supervisor's sink composition (``build_primary_event_sink`` of the seed)."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import Callable, Optional

from typing_extensions import TypedDict, Unpack

from ._config import (
    ENV_NATS_URL,
    ENV_REQUIRE_JETSTREAM,
    ENV_SPOOL_DIR,
    ENV_SPOOL_MAX_BYTES,
    ENV_USE_NOOP_SINK,
    env_flag,
    env_positive_int,
)
from ._errors import ConnectError
from ._noop_sink import NoopEventSink
from ._sink import JetStreamEventSink, TransitionCallback
from ._sink_protocol import EventSink
from ._spool import DEFAULT_SPOOL_MAX_BYTES, SpoolingEventSink
from ._visible import warn_visibly

__all__ = ["build_primary_event_sink"]

logger = logging.getLogger("cellos_sink_jetstream")


class SinkOptions(TypedDict, total=False):
    """The options of :meth:`JetStreamEventSink.connect` ``build_primary_event_sink`` passes on.

    A typed ``**options``: a type checker catches a misspelt one.
    """

    ca_file: Optional[str]
    tls: Optional[ssl.SSLContext]
    stream: Optional[str]
    publish_timeout: float
    connect_timeout: float
    max_in_flight: int
    max_queue: int
    retry_attempts: int
    exit_timeout: float
    on_transition: Optional[TransitionCallback]
    clock: Optional[Callable[[], float]]
    name: str
    reconnect_time_wait: float
    trace_context: bool
    content_mode: str


def build_primary_event_sink(
    subject: str, env: Mapping[str, str] = os.environ, **options: Unpack[SinkOptions]
) -> EventSink:
    """Build the supervisor's primary sink from the environment.

    - ``CELL_OS_USE_NOOP_SINK`` truthy: a :class:`NoopEventSink`, without connecting (this
      wins over ``CELL_OS_REQUIRE_JETSTREAM``; with both set, the choice is announced).
    - Otherwise connect to ``NATS_URL`` (default ``nats://127.0.0.1:4222``), over TLS with
      ``NATS_CA_FILE`` when set, within ``connect_timeout`` (default 5 s).
    - If that fails: announce that events will be dropped and return a
      :class:`NoopEventSink`, unless ``CELL_OS_REQUIRE_JETSTREAM`` is truthy, then raise
      :class:`ConnectError`.

    - ``CELL_OS_SPOOL_DIR`` set: the JetStream sink is wrapped in a
      :class:`SpoolingEventSink` on that directory (bounded by ``CELL_OS_SPOOL_MAX_BYTES``,
      default 1 GiB), and NATS unreachable at startup no longer means the no-op sink:
      events are spooled while the sink keeps connecting in the background
      (``CELL_OS_REQUIRE_JETSTREAM`` still makes startup fail instead;
      ``CELL_OS_USE_NOOP_SINK`` still wins).

    An announcement is one WARNING record on the ``cellos_sink_jetstream`` logger when the
    program configured logging (a handler on the root or the package logger), else one line
    on stderr: never both, never neither. The no-op sink's ``reason`` says the same.

    Both flags are read (and validated) before connecting: a value that is not a boolean
    raises :class:`ConfigError` naming the variable. ``options`` go to
    :meth:`JetStreamEventSink.connect`.
    """
    use_noop = env_flag(env, ENV_USE_NOOP_SINK)
    require = env_flag(env, ENV_REQUIRE_JETSTREAM)
    spool_dir = env.get(ENV_SPOOL_DIR, "").strip()
    max_bytes = env_positive_int(env, ENV_SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_BYTES)
    if use_noop and require:
        reason = (
            f"{ENV_USE_NOOP_SINK} and {ENV_REQUIRE_JETSTREAM} are both set; the no-op opt-in"
            f" wins, so JetStream was not tried"
        )
        _announce(f"{reason}; unset {ENV_USE_NOOP_SINK} to require JetStream instead")
        return NoopEventSink(reason=reason)
    if use_noop:
        reason = f"{ENV_USE_NOOP_SINK} is set"
        logger.info("%s: events go to the no-op sink", reason)
        return NoopEventSink(reason=reason)
    if spool_dir:
        return _spooling_sink(
            subject,
            env,
            spool_dir=spool_dir,
            max_bytes=max_bytes,
            require=require,
            options=options,
        )
    try:
        return JetStreamEventSink.connect(None, subject, env=env, **options)
    except ConnectError as exc:
        if require:
            raise ConnectError(
                f"{exc} ({ENV_REQUIRE_JETSTREAM} is set, so startup fails)"
            ) from None
        # ConnectError messages show URLs redacted, never a credential.
        reason = f"JetStream unreachable at startup: {exc}"
        _announce(
            f"{reason}; set {ENV_REQUIRE_JETSTREAM}=1 to make startup fail instead"
            f" ({ENV_NATS_URL} picks the server)"
        )
        return NoopEventSink(reason=reason)


def _announce(detail: str) -> None:
    """Say once, where the operator will see it, that events are about to be dropped."""
    warn_visibly(f"events will be dropped (no-op sink): {detail}")


def _spooling_sink(
    subject: str,
    env: Mapping[str, str],
    *,
    spool_dir: str,
    max_bytes: int,
    require: bool,
    options: SinkOptions,
) -> SpoolingEventSink:
    try:
        inner = JetStreamEventSink.connect(None, subject, env=env, **options)
    except ConnectError as exc:
        if require:
            raise ConnectError(
                f"{exc} ({ENV_REQUIRE_JETSTREAM} is set, so startup fails)"
            ) from None
        logger.warning(
            "JetStream unreachable at startup: %s; events are spooled to %s (%s) and sent "
            "once it is reachable",
            exc,
            spool_dir,
            ENV_SPOOL_DIR,
        )
        inner = JetStreamEventSink.connect(None, subject, env=env, wait=False, **options)
    try:
        return SpoolingEventSink(inner, spool_dir, max_bytes=max_bytes)
    except BaseException:
        inner.close()
        raise
