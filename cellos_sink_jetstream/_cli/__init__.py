"""The ``cellos-jetstream`` command-line tool (also ``python -m cellos_sink_jetstream``).

Commands:

``emit``
    Publish CloudEvents from a JSON-lines file (or stdin) through the blocking sink.
``check``
    Say whether a server can take the sink's events: JetStream on, a stream capturing the
    subject, and which stream settings weaken the sink's promises.
``dev-server``
    Run a local nats-server with JetStream and the ``CELLOS`` stream, for development.
``demo``
    Emit supervisor lifecycle events from several threads and read them back; optionally
    restart the server mid-run to show the circuit breaker at work.
``tail``
    Print the events stored in a stream.

Every command exits 0 on success. A failure prints one line on stderr,
``cellos-jetstream: error: <reason>``, and exits 1, or 2 for a usage error or when NATS
cannot be reached. Server URLs are only ever shown through
:func:`~cellos_sink_jetstream._config.redact_url`.
"""

from __future__ import annotations

from ._check import nats_stream_add_command, stream_warnings
from ._demo_events import build_demo_workload
from ._emit import EmitTally, Emitter, Progress
from ._exit_status import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from ._main import main
from ._parser import build_parser
from ._streams import capture_pattern

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "EmitTally",
    "Emitter",
    "Progress",
    "build_demo_workload",
    "build_parser",
    "capture_pattern",
    "main",
    "nats_stream_add_command",
    "stream_warnings",
]
