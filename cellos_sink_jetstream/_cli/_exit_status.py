"""Exit statuses of ``cellos-jetstream`` and the error that carries one."""

from __future__ import annotations

from .._errors import SinkError

#: Exit status: success.
EXIT_OK = 0
#: Exit status: the command failed (events not stored, no stream, invalid input, ...).
EXIT_FAILURE = 1
#: Exit status: a usage error, or NATS could not be reached.
EXIT_UNREACHABLE = 2
#: Exit status: a usage error (a bad option value, a missing input file); same as above.
EXIT_USAGE = EXIT_UNREACHABLE
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


class CliError(SinkError):
    """A command failed; the message is the one line shown to the user."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        #: The process exit status this failure maps to.
        self.exit_code = exit_code
