"""Warnings an operator must see even when the program configured no logging."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("cellos_sink_jetstream")


def logging_configured() -> bool:
    """Whether a WARNING from the package's logger reaches any handler but a NullHandler."""
    handlers = [*logging.getLogger().handlers, *logger.handlers]
    return any(not isinstance(handler, logging.NullHandler) for handler in handlers)


def warn_visibly(message: str) -> None:
    """One WARNING record, or, with no logging configured, one line on stderr instead.

    A library must not configure logging, but some warnings (events about to be dropped,
    an exit that waits for the sink) are worse unseen: with no handler anywhere a WARNING
    would vanish into the package's NullHandler.
    """
    if logging_configured():
        logger.warning("%s", message)
        return
    stream = sys.stderr
    if stream is None:  # pythonw and daemons without a stderr
        return
    try:
        stream.write(f"cellos_sink_jetstream: {' '.join(message.split())}\n")
        stream.flush()
    except (OSError, ValueError):  # closed or broken stderr: nothing more can be done
        pass
