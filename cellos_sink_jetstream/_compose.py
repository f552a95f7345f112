"""The supervisor's sink composition (``build_primary_event_sink`` of the seed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ._config import ENV_NATS_URL, ENV_REQUIRE_JETSTREAM, ENV_USE_NOOP_SINK, env_flag
from ._errors import ConnectError
from ._sink import EventSink, JetStreamEventSink, NoopEventSink

__all__ = ["build_primary_event_sink"]

logger = logging.getLogger("cellos_sink_jetstream")


def build_primary_event_sink(
    subject: str, env: Mapping[str, str] = os.environ, **options: Any
) -> EventSink:
    """Build the supervisor's primary sink from the environment.

    - ``CELL_OS_USE_NOOP_SINK`` truthy: a :class:`NoopEventSink`, without connecting.
    - Otherwise connect to ``NATS_URL`` (default ``nats://127.0.0.1:4222``), over TLS with
      ``NATS_CA_FILE`` when set, within ``connect_timeout`` (default 5 s).
    - If that fails: log a warning and return a :class:`NoopEventSink`, unless
      ``CELL_OS_REQUIRE_JETSTREAM`` is truthy, then raise :class:`ConnectError`.

    Both flags are read (and validated) before connecting: a value that is not a boolean
    raises :class:`ConfigError` naming the variable. ``options`` go to
    :meth:`JetStreamEventSink.connect`.
    """
    use_noop = env_flag(env, ENV_USE_NOOP_SINK)
    require = env_flag(env, ENV_REQUIRE_JETSTREAM)
    if use_noop:
        logger.info("%s is set: events go to the no-op sink", ENV_USE_NOOP_SINK)
        return NoopEventSink()
    try:
        return JetStreamEventSink.connect(None, subject, env=env, **options)
    except ConnectError as exc:
        if require:
            raise ConnectError(
                f"{exc} ({ENV_REQUIRE_JETSTREAM} is set, so startup fails)"
            ) from None
        logger.warning(
            "JetStream unreachable, events go to the no-op sink: %s (set %s=1 to fail instead;"
            " %s picks the server)",
            exc,
            ENV_REQUIRE_JETSTREAM,
            ENV_NATS_URL,
        )
        return NoopEventSink()
