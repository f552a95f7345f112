"""``emit``: publish CloudEvents from a JSON-lines file (or stdin) through the blocking sink."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Optional, TextIO

from .._errors import InvalidEventError, InvalidSubjectError, PublishError, SinkError
from .._event import CloudEventV1
from .._seam import PubAck
from .._sink import JetStreamEventSink
from .._subject import resolve_tenant_subject
from ._exit_status import EXIT_OK, EXIT_USAGE, CliError
from ._output import PROG, err, is_tty, out, plural
from ._target import Target, connect_sink, target_from_args

_FAILURES_SHOWN = 10


@dataclass
class EmitTally:
    """Running counts of one ``emit`` run."""

    published: int = 0
    duplicates: int = 0
    failed: int = 0
    invalid: int = 0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return max(1e-9, time.monotonic() - self.started)

    def rate(self) -> float:
        """Acknowledged events per second."""
        return self.published / self.elapsed()

    def describe(self) -> str:
        """One line: what was published, failed and skipped so far."""
        return (
            f"{self.published} published ({self.duplicates} duplicate"
            f"{'' if self.duplicates == 1 else 's'}), {self.failed} failed, "
            f"{plural(self.invalid, 'invalid line')}, {self.rate():.0f} events/s"
        )


class Progress:
    """Shows an :class:`EmitTally` on stderr while ``emit`` runs.

    On a terminal it rewrites a single line (at most every ``interval`` seconds, 0.1 by
    default); otherwise it writes a plain line every ``interval`` seconds (5 by default).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool = True,
        interval: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = is_tty(stream)
        self._enabled = enabled
        self._interval = interval if interval is not None else (0.1 if self._tty else 5.0)
        self._clock = clock
        self._due = clock() + self._interval
        self._line_shown = False

    def update(self, tally: EmitTally) -> None:
        """Show ``tally`` if the interval has passed since it was last shown."""
        now = self._clock()
        if not self._enabled or now < self._due:
            return
        self._due = now + self._interval
        text = f"{PROG}: {tally.describe()}"
        if self._tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._stream.write("\r\x1b[2K" + text[:width])
            self._line_shown = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def message(self, text: str) -> None:
        """Write ``text`` on a line of its own, below (not over) the progress line."""
        self.clear()
        self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Remove the progress line from the terminal."""
        if self._line_shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._line_shown = False


@dataclass(frozen=True)
class _InFlight:
    line: int
    event_id: str
    future: Future[PubAck]


class Emitter:
    """Feeds numbered JSON lines to a sink in order, with at most ``window`` in flight.

    Invalid lines are skipped (or, with ``strict``, end the run). The first event that is
    not stored ends the run too, unless ``keep_going``, so that a re-run continues in
    order; either way everything already in flight gets its outcome first.
    """

    def __init__(
        self,
        sink: JetStreamEventSink,
        template: str,
        progress: Progress,
        *,
        window: int = 256,
        strict: bool = False,
        keep_going: bool = False,
    ) -> None:
        self._sink = sink
        self._template = template
        self._progress = progress
        self._window = window
        self._strict = strict
        self._keep_going = keep_going
        self._in_flight: deque[_InFlight] = deque()
        self._failures_shown = 0
        #: The counts so far.
        self.tally = EmitTally()
        #: Why the run ended early (``--strict`` and an invalid line), if it did.
        self.aborted: Optional[str] = None
        #: Line of the first failed event that ended the run early, if one did.
        self.stopped_at: Optional[int] = None

    def run(self, lines: Iterable[tuple[int, bytes]]) -> EmitTally:
        """Publish every line; return the tally once every event has its outcome."""
        try:
            for number, raw in lines:
                if raw.strip():
                    self._submit(number, raw)
                self._settle_down_to(self._window - 1)
                self._progress.update(self.tally)
                if self.aborted is not None or self.stopped_at is not None:
                    break
        finally:
            self._sink.flush(self._flush_timeout())
            self._settle_down_to(0)
            self._progress.clear()
        return self.tally

    def _flush_timeout(self) -> float:
        return 30.0 + 0.01 * len(self._in_flight)

    def _submit(self, number: int, raw: bytes) -> None:
        try:
            event = self._parse(number, raw)
        except (InvalidEventError, InvalidSubjectError) as exc:
            self._invalid_line(number, exc)
            return
        try:
            future = self._sink.emit_nowait(event)
        except InvalidEventError as exc:  # too large for the server's max_payload
            self._invalid_line(number, exc)
        except PublishError as exc:  # CircuitOpenError: nothing was sent
            self._failed(number, event.id, exc)
        else:
            self._in_flight.append(_InFlight(number, event.id, future))

    def _parse(self, number: int, raw: bytes) -> CloudEventV1:
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        event = CloudEventV1.from_json(raw)
        # Rejects an unusable tenant id here, so it is reported as an invalid line.
        resolve_tenant_subject(self._template, event)
        return event

    def _invalid_line(self, number: int, exc: SinkError) -> None:
        reason = f"line {number}: {exc}"
        if self._strict:
            self.aborted = f"{reason} (--strict: stopped here)"
            return
        self.tally.invalid += 1
        self._progress.message(f"{PROG}: {reason}; skipped")

    def _settle_down_to(self, keep: int) -> None:
        while len(self._in_flight) > max(0, keep):
            self._settle(self._in_flight.popleft())

    def _settle(self, pending: _InFlight) -> None:
        try:
            ack = pending.future.result(timeout=self._flush_timeout())
        except SinkError as exc:  # first: PublishTimeoutError is a TimeoutError too
            self._failed(pending.line, pending.event_id, exc)
        except FutureTimeoutError:
            self._failed(pending.line, pending.event_id, PublishError("no outcome in time"))
        else:
            self.tally.published += 1
            if ack.duplicate:
                self.tally.duplicates += 1

    def _failed(self, number: int, event_id: str, exc: BaseException) -> None:
        self.tally.failed += 1
        if not self._keep_going and self.stopped_at is None:
            self.stopped_at = number
        if self._failures_shown < _FAILURES_SHOWN:
            self._failures_shown += 1
            self._progress.message(
                f"{PROG}: line {number}: event {event_id!r} not acknowledged: {exc}"
            )

    @property
    def failures_not_shown(self) -> int:
        """Failures beyond the first few, which were counted but not printed one by one."""
        return self.tally.failed - self._failures_shown


def _numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(stream, start=1)


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path != "-":
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, after the with body
        except OSError as exc:
            raise CliError(
                f"cannot read {path}: {exc.strerror or exc}", exit_code=EXIT_USAGE
            ) from None
        with handle:
            yield handle
        return
    stdin: Any = sys.stdin
    if is_tty(stdin):
        err(f"{PROG}: reading JSON lines from the terminal; end with Ctrl-D")
    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        yield buffer
    else:  # a text stream without a buffer (e.g. io.StringIO in tests)
        import io  # noqa: PLC0415

        yield io.BytesIO(stdin.read().encode("utf-8"))


def cmd_emit(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    template: str = args.subject
    progress = Progress(sys.stderr, enabled=not args.quiet, interval=args.progress_interval)
    with (
        _open_input(args.file) as lines,
        connect_sink(
            target,
            template,
            command="emit",
            stream=args.stream,
            publish_timeout=args.publish_timeout,
        ) as sink,
    ):
        emitter = Emitter(
            sink,
            template,
            progress,
            window=args.window,
            strict=args.strict,
            keep_going=args.keep_going,
        )
        tally = emitter.run(_numbered_lines(lines))
    if not args.quiet:
        _print_emit_summary(emitter, target, template, args.file)
    if emitter.aborted is not None:
        raise CliError(emitter.aborted)
    if tally.failed:
        where = "" if emitter.stopped_at is None else f", stopped at line {emitter.stopped_at}"
        raise CliError(
            f"{plural(tally.failed, 'event')} not acknowledged{where}; re-run the same input "
            f"to retry (acknowledged events come back as duplicates, not new copies)"
        )
    return EXIT_OK


def _print_emit_summary(emitter: Emitter, target: Target, template: str, source: str) -> None:
    tally = emitter.tally
    new = tally.published - tally.duplicates
    shown_source = "stdin" if source == "-" else source
    out(f"emitted {shown_source} to {target.display_url} ({template})")
    out(f"  published   {tally.published} ({new} new, {tally.duplicates} duplicates)")
    failed = f"  failed      {tally.failed}"
    if emitter.failures_not_shown > 0:
        failed += f" ({emitter.failures_not_shown} not listed above)"
    out(failed)
    out(f"  invalid     {plural(tally.invalid, 'line')} skipped")
    out(f"  rate        {tally.rate():.0f} events/s ({tally.elapsed():.2f} s)")
