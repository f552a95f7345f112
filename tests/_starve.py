"""Make one replayed event wait in the sink's queue past its deadline, deterministically.

On a loop thread starved of CPU (the 2-core CI machine under load) a pipelined request can
reach the front of the queue after its deadline: the runner then gives it up unsent, while
the requests queued just after it, whose deadlines are a little later, are still sent.
Instead of starving a thread, this sets that one request's deadline in the past.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cellos_sink_jetstream import JetStreamEventSink
from cellos_sink_jetstream import _sink as sink_module


class _Behind:
    """The ``time`` module as the sink sees it, ``seconds`` behind on ``monotonic()``."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def monotonic(self) -> float:
        return time.monotonic() - self._seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def first_replay_of_waits_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch, sink: JetStreamEventSink, event_id: str
) -> None:
    """The first time replay sends ``event_id``, its deadline is already over."""
    original = sink._emit_encoded_nowait
    done = False

    def late(*args: Any) -> Any:
        nonlocal done
        if done or args[0] != event_id:
            return original(*args)
        done = True
        with monkeypatch.context() as patch:
            patch.setattr(sink_module, "time", _Behind(sink.publish_timeout + 1.0))
            return original(*args)

    monkeypatch.setattr(sink, "_emit_encoded_nowait", late)
