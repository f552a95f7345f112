"""Random event ids: cut from a pool of os.urandom bytes, never twice, not shared by a fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from cellos_sink_jetstream import _event_ids
from cellos_sink_jetstream._event_ids import random_uuid4


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every block os.urandom returns to the id pool, from an empty pool on."""
    blocks: list[bytes] = []
    real_urandom = os.urandom

    def urandom(size: int) -> bytes:
        blocks.append(real_urandom(size))
        return blocks[-1]

    monkeypatch.setattr(_event_ids.os, "urandom", urandom)
    _event_ids._pool.empty()
    return blocks


def test_one_system_call_draws_the_randomness_of_256_ids(drawn: list[bytes]) -> None:
    # os.urandom releases the GIL: one call per id slowed pipelined emits (see the module).
    for _ in range(1000):
        random_uuid4()
    assert len(drawn) == 4


def test_ids_use_the_drawn_bytes_in_order_and_each_byte_once(drawn: list[bytes]) -> None:
    ids = [random_uuid4() for _ in range(600)]
    digits = "".join(block.hex() for block in drawn)
    for n, text in enumerate(ids):
        expected = digits[32 * n : 32 * n + 32]
        got = text.replace("-", "")
        # Only the version nibble and the variant's two top bits are not random.
        assert got[:12] + got[13:16] + got[17:] == expected[:12] + expected[13:16] + expected[17:]
        assert int(got[16], 16) & 0x3 == int(expected[16], 16) & 0x3
        assert uuid.UUID(text).version == 4


def test_threads_drawing_at_once_never_get_the_same_id() -> None:
    ids: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(ids))

    def draw(into: list[str]) -> None:
        start.wait()
        into.extend(random_uuid4() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for into in ids for text in into]
    assert len(every) == len(set(every)) == 24_000


def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    # In a fresh interpreter with no other threads: fork() warns in a threaded process.
    script = textwrap.dedent(
        """
        import os
        from cellos_sink_jetstream._event_ids import random_uuid4

        random_uuid4()  # the pool now holds the next 255 ids
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write_end, random_uuid4().encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read_end, 64).decode()
        parent = {random_uuid4() for _ in range(255)}
        print(child in parent, len(child))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["False", "36"]
