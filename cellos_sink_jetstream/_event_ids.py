"""Random event ids (UUID version 4) without a system call per id.

``os.urandom`` releases the GIL around its ``getrandom`` call. In a thread that emits in
a tight loop, each release wakes the sink's loop thread if it is waiting for the GIL, for
nothing (the emitting thread has the GIL back first), at the cost of a futex wake-up per
event: pipelined emits of created events ran at 17.7k/s with one ``os.urandom`` call per
id and at 23.1k/s without (benchmarks/README.md). So ids are cut from 4 KiB of
``os.urandom`` at a time, 256 ids per call: the same bytes of the kernel's CSPRNG, in the
same order, no id ever cut twice. A child process starts with an empty pool after
``fork()``, so parent and child never hand out the same id.
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_uuid4"]

_ID_HEX_DIGITS = 32
_POOL_BYTES = 4096

# The variant's two top bits are 10: keep a random nibble's two low bits under them.
_VARIANT_NIBBLE = {f"{n:x}": f"{0x8 | (n & 0x3):x}" for n in range(16)}


class _HexPool:
    """Hex digits from ``os.urandom``, handed out once each, in order, to any thread."""

    __slots__ = ("_digits", "_lock", "_next")

    def __init__(self) -> None:
        self.empty()

    def empty(self) -> None:
        """Forget what is left (and the lock, which a thread of the parent may hold)."""
        self._lock = threading.Lock()
        self._digits = ""
        self._next = 0

    def take(self, count: int) -> str:
        """The next ``count`` hex digits (at most ``2 * _POOL_BYTES``)."""
        with self._lock:
            start = self._next
            if start + count > len(self._digits):
                self._digits, start = os.urandom(_POOL_BYTES).hex(), 0
            self._next = start + count
            return self._digits[start : self._next]


_pool = _HexPool()


def random_uuid4() -> str:
    """``str(uuid.uuid4())``: 122 random bits, the version nibble 4, the RFC 4122 variant."""
    h = _pool.take(_ID_HEX_DIGITS)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_NIBBLE[h[16]]}{h[17:20]}-{h[20:]}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.empty)
