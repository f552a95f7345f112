"""Waking the loop thread from a caller's thread without letting go of the GIL.

Why: a caller that finds the loop thread idle wakes it. ``loop.call_soon_threadsafe``
does that with a ``send()`` on asyncio's self-pipe, and CPython releases the GIL around
every socket call. Eight threads that emit at once are mostly waiting for the GIL, so one
of them takes it during that microsecond-long ``send()``, and the caller, which only
wanted to go on to wait for its ack, sleeps for the GIL in turn: a context switch (and on
a VM, an inter-processor interrupt) for nothing. Measured with 8 emitting threads
(``benchmarks/README.md``, 4 December): the process's voluntary context switches fell from
5.2 to 4.5 per event in every A/B run, and events per second rose by 0-20 %.

:class:`LoopWaker` owns a non-blocking pipe whose read end the loop watches. Its
:meth:`~LoopWaker.wake` writes one byte with the C library's ``write`` called through
``ctypes.PyDLL``, which keeps the GIL: a non-blocking one-byte write never waits, so
holding the GIL across it costs nobody anything. Where that is not available (not
POSIX, no ``ctypes``), :meth:`~LoopWaker.wake` falls back to ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any, Callable, Optional

try:
    import ctypes
except ImportError:  # some embedded builds leave it out: then wake() falls back
    ctypes = None  # type: ignore[assignment]

__all__ = ["LoopWaker"]

_READ_CHUNK = 4096


def _load_gil_holding_io() -> Optional[tuple[Callable[..., int], Callable[..., int]]]:
    """The C library's ``write`` and ``read``, called with the GIL held, where available."""
    if os.name != "posix" or ctypes is None:
        return None
    try:
        libc = ctypes.PyDLL(None)  # the process's own symbols: libc is among them
        write, read = libc.write, libc.read
    except (OSError, AttributeError):
        return None
    for function in (write, read):
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        function.restype = ctypes.c_ssize_t
    return write, read


_GIL_HOLDING_IO = _load_gil_holding_io()


class LoopWaker:
    """Runs ``on_wake`` on an event loop's thread soon after any thread calls :meth:`wake`.

    :meth:`attach` and :meth:`detach` run on the loop's thread; :meth:`wake` on any.
    Wake-ups that come before the loop ran ``on_wake`` coalesce into one call; a wake-up
    before :meth:`attach` or after :meth:`detach` does nothing.
    """

    def __init__(self, on_wake: Callable[[], None]) -> None:
        self._on_wake = on_wake
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Held across the write and the close: a wake-up racing detach() must never write
        # to a descriptor number the process has meanwhile reused for something else.
        self._lock = threading.Lock()
        self._read_fd = -1
        self._write_fd = -1
        self._buffer: Any = None

    @property
    def keeps_the_gil(self) -> bool:
        """Whether :meth:`wake` writes to its own pipe with the GIL held (else it falls back)."""
        return self._write_fd >= 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching for wake-ups on ``loop`` (call on its thread)."""
        self._loop = loop
        if _GIL_HOLDING_IO is None:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._buffer = ctypes.create_string_buffer(_READ_CHUNK)
        try:
            loop.add_reader(read_fd, self._on_readable)
        except (NotImplementedError, RuntimeError):  # a loop that cannot watch a pipe
            os.close(read_fd)
            os.close(write_fd)
            return
        with self._lock:
            self._read_fd, self._write_fd = read_fd, write_fd

    def wake(self) -> None:
        """Have the loop's thread call ``on_wake`` soon (any thread)."""
        if self._write_fd >= 0 and _GIL_HOLDING_IO is not None:
            with self._lock:
                if self._write_fd >= 0:
                    # -1 with EAGAIN when the pipe is full: a wake-up is pending anyway.
                    _GIL_HOLDING_IO[0](self._write_fd, b"\0", 1)
                    return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to wake
                loop.call_soon_threadsafe(self._on_wake)

    def detach(self) -> None:
        """Stop watching and close the pipe (call on the loop's thread, before it closes)."""
        with self._lock:
            read_fd, write_fd = self._read_fd, self._write_fd
            self._read_fd = self._write_fd = -1
        loop, self._loop = self._loop, None
        if read_fd >= 0:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(read_fd)
            os.close(read_fd)
            os.close(write_fd)

    def _on_readable(self) -> None:
        io, read_fd = _GIL_HOLDING_IO, self._read_fd
        if io is not None and read_fd >= 0:
            # Empty the pipe, GIL held too: any number of wake-ups is one call of on_wake.
            while io[1](read_fd, self._buffer, _READ_CHUNK) == _READ_CHUNK:
                pass
        self._on_wake()
