"""The entry point: parse the arguments, run the command, turn failures into one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Optional

from .._config import STREAM_NAME_RE, scrub
from .._errors import ConfigError, ConnectError, InvalidSubjectError, SinkError
from ._exit_status import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
)
from ._output import PROG, err
from ._parser import build_parser
from ._target import describe_error, option, target_from_args

logger = logging.getLogger("cellos_sink_jetstream.cli")


@contextlib.contextmanager
def _logging_to_stderr(verbosity: int) -> Iterator[None]:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
    if verbosity == 0:  # asyncio's own complaints about TLS teardown are noise to users
        handler.addFilter(lambda record: not record.name.startswith("asyncio"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines() or ["(no reason given; -vv shows where)"]
    first = lines[0].rstrip(":; ").removesuffix("; log tail")
    if len(lines) > 1:
        logger.info("%s", text)
        first += " (-v shows more)"
    return first


def _exit_code_of(exc: SinkError) -> int:
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, (ConfigError, InvalidSubjectError)):
        # Raised for option values (--url, --ca-file, --subject, --tenant) before anything
        # is sent; a line of input with a bad tenant is reported by the command itself.
        return EXIT_USAGE
    return EXIT_UNREACHABLE if isinstance(exc, ConnectError) else EXIT_FAILURE


def _secrets_of(args: argparse.Namespace) -> tuple[str, ...]:
    try:
        return target_from_args(args).secrets
    except ConfigError:
        return ()


def _fail(message: str, code: int) -> int:
    err(f"{PROG}: error: {message}")
    return code


def _check_option_values(args: argparse.Namespace) -> None:
    # Values nats-py would otherwise refuse half-way with its own words (an "unexpected"
    # failure, exit 1) are usage errors, named before anything connects.
    stream = getattr(args, "stream", None)
    if stream is not None and not STREAM_NAME_RE.fullmatch(stream):
        raise CliError(
            f"--stream: {stream[:60]!r} is not a stream name JetStream accepts (printable "
            "ASCII without spaces, '.', '*', '>', '/' or '\\'); pass the stream's name",
            exit_code=EXIT_USAGE,
        )
    subject = getattr(args, "subject", None)
    if subject is not None and not subject.strip():
        raise CliError(
            "--subject is empty; pass a subject such as 'cellos.events.{tenantId}' (tail "
            "also takes NATS wildcards: 'cellos.events.>')",
            exit_code=EXIT_USAGE,
        )


def _run_command(args: argparse.Namespace) -> int:
    try:
        _check_option_values(args)
        return int(args.handler(args))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except SinkError as exc:
        # The library's own messages never carry credentials.
        return _fail(_first_line(str(exc)), _exit_code_of(exc))
    except BrokenPipeError:
        # The reader went away (`| head`): it has all it wanted, so this is success. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (asyncio.TimeoutError, TimeoutError):
        logger.debug("timed out", exc_info=True)
        return _fail("timed out waiting for NATS (-vv shows where)", EXIT_FAILURE)
    except OSError as exc:
        text = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None:
            text = f"{text}: {exc.filename}"
        return _fail(_first_line(scrub(text, _secrets_of(args))), EXIT_FAILURE)
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        text = f"unexpected {describe_error(exc, _secrets_of(args))} (-vv shows where)"
        return _fail(_first_line(text), EXIT_FAILURE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``cellos-jetstream`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_UNREACHABLE
    with _logging_to_stderr(option(args, "verbose", 0)):
        return _run_command(args)
