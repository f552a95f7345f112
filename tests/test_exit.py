"""The exit-time flush against a frozen server (SIGSTOP), in child processes.

A program that exits without ``close()`` while events are unsettled gets a bounded wait
(``exit_timeout``), one log line saying how many events were unsettled, and Ctrl-C during
that wait ends it at once. The children are ``tests/exit_child.py``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Optional

import pytest

from tests import exit_child
from tests._servers import frozen
from tests.conftest import StagedStream
from tests.test_chaos import PROJECT_ROOT

#: What must never appear on the stderr of an exiting child.
NOISE = (
    "Task was destroyed",
    "Exception ignored",
    "Exception in thread",
    "Traceback",
    "Fatal Python error",
    "ResourceWarning",
    "Event loop is closed",
)


class Child:
    """``tests.exit_child`` running with its stdout and stderr read line by line."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._stderr_changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(process.stdout, self.stdout.put)),
            threading.Thread(target=self._pump, args=(process.stderr, self._add_stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(pipe: Optional[IO[bytes]], put: object) -> None:
        assert pipe is not None
        assert callable(put)
        for line in iter(pipe.readline, b""):
            put(line.decode(errors="replace").rstrip("\n"))

    def _add_stderr(self, line: str) -> None:
        with self._stderr_changed:
            self.stderr.append(line)
            self._stderr_changed.notify_all()

    def expect(self, line: str, timeout: float = 30) -> None:
        """Wait for the next stdout line and check it is ``line``."""
        try:
            got = self.stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {line!r} from the child within {timeout:g}s") from None
        assert got == line, f"expected {line!r}, got {got!r}; stderr:\n{self.stderr_text()}"

    def tell(self, line: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(f"{line}\n".encode())
        stdin.flush()

    def wait_for_log(self, words: str, timeout: float) -> str:
        """Wait until a stderr line contains ``words``; return that line."""
        with self._stderr_changed:
            found = self._stderr_changed.wait_for(
                lambda: any(words in line for line in self.stderr), timeout
            )
            if not found:
                raise AssertionError(
                    f"no log line with {words!r} within {timeout:g}s; stderr:\n{self.stderr_text()}"
                )
            return next(line for line in self.stderr if words in line)

    def stderr_text(self) -> str:
        with self._stderr_changed:
            return "\n".join(self.stderr)

    def join(self, timeout: float) -> int:
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode


@contextmanager
def exit_child_process(
    stream: StagedStream, mode: str, exit_timeout: Optional[float], *, logging: bool = True
) -> Iterator[Child]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "default"}
    command = [
        sys.executable,
        "-m",
        "tests.exit_child",
        stream.url,
        stream.subject("exit"),
        mode,
        "default" if exit_timeout is None else str(exit_timeout),
        *([] if logging else ["nolog"]),
    ]
    pipes = subprocess.PIPE
    with subprocess.Popen(
        command, cwd=str(PROJECT_ROOT), env=env, stdin=pipes, stdout=pipes, stderr=pipes
    ) as process:
        try:
            yield Child(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize(("exit_timeout", "shown"), [(None, "2.0 s"), (0.5, "0.50 s")])
def test_exit_without_close_waits_at_most_exit_timeout_and_says_how_many_were_unsettled(
    stream: StagedStream, exit_timeout: Optional[float], shown: str
) -> None:
    with exit_child_process(stream, "return", exit_timeout) as child:
        child.expect("READY")
        with frozen(stream.server):
            child.tell("go")
            child.expect("EXITING")
            exiting = time.monotonic()
            line = child.wait_for_log("unsettled", timeout=10)
            # Generous: the bound is exit_timeout; this only catches a wait for the
            # publish timeout (60 s in the child).
            status = child.join(timeout=30)
            took = time.monotonic() - exiting
    stderr = child.stderr_text()
    print(f"\nexit ({exit_timeout=}) took {took:.2f}s; {line}")
    assert status == 0, stderr
    assert f"{exit_child.QUEUED} event(s)" in line
    assert f"waiting up to {shown} (exit_timeout)" in line
    assert line.startswith("WARNING "), line
    assert sum("unsettled" in entry for entry in child.stderr) == 1, stderr
    # One line counts them: closing at the deadline does not count them again.
    assert sum(f"{exit_child.QUEUED} event(s)" in entry for entry in child.stderr) == 1, stderr
    for noise in NOISE:
        assert noise not in stderr, stderr


def test_the_exit_flush_is_said_on_stderr_when_the_program_configured_no_logging(
    stream: StagedStream,
) -> None:
    # The "exit without close() took 6.1 s, silently": a program that configured
    # no logging still gets the one line (the package's NullHandler would swallow it).
    with exit_child_process(stream, "return", 0.5, logging=False) as child:
        child.expect("READY")
        with frozen(stream.server):
            child.tell("go")
            child.expect("EXITING")
            line = child.wait_for_log("unsettled", timeout=10)
            status = child.join(timeout=30)
    stderr = child.stderr_text()
    assert status == 0, stderr
    assert line.startswith("cellos_sink_jetstream: exiting with "), line
    assert f"{exit_child.QUEUED} event(s)" in line, line
    assert "(exit_timeout)" in line, line
    assert len(child.stderr) == 1, stderr


def test_ctrl_c_during_the_exit_flush_ends_it_at_once(stream: StagedStream) -> None:
    # exit_timeout 60 s: a flush that Ctrl-C did not end would keep the child far longer
    # than the 15 s it gets here.
    with exit_child_process(stream, "blocked", 60.0) as child:
        child.expect("READY")
        with frozen(stream.server):
            child.tell("go")
            child.expect("BLOCKED")
            child.process.send_signal(signal.SIGINT)  # Ctrl-C in the blocked emit()
            child.expect("INTERRUPTED")
            child.wait_for_log("waiting up to 60 s (exit_timeout)", timeout=10)
            child.process.send_signal(signal.SIGINT)  # Ctrl-C during the exit flush
            status = child.join(timeout=15)
            line = child.wait_for_log("interrupted", timeout=1)
    stderr = child.stderr_text()
    print(f"\nthe child's stderr:\n{stderr}")
    assert status == 130, stderr
    assert "stopped waiting" in line, line
    for noise in NOISE:
        assert noise not in stderr, stderr
