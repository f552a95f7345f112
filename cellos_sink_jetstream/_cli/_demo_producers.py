"""The demo's producer threads: publish every event until it is acknowledged."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from .._errors import CircuitOpenError, PublishError
from .._event import CloudEventV1
from .._publisher import PubAck
from .._sink import JetStreamEventSink
from ._demo_chaos import ServerRestart

#: How long the producers keep retrying an event before giving up on it.
DEMO_DEADLINE_SECONDS = 60.0


@dataclass
class DemoCounters:
    """What the producer threads saw (updated under :attr:`lock`)."""

    acked: int = 0
    fast_fails: int = 0
    retried: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _publish_until_acked(
    sink: JetStreamEventSink, event: CloudEventV1, counters: DemoCounters, deadline: float
) -> Optional[PubAck]:
    """Publish ``event`` (same id every time) until JetStream acknowledges it, or give up."""
    while time.monotonic() < deadline:
        try:
            return sink.publish(event)
        except CircuitOpenError as exc:
            with counters.lock:
                counters.fast_fails += 1
            time.sleep(min(0.5, max(0.01, exc.retry_after)))
        except PublishError:
            with counters.lock:
                counters.retried += 1
            time.sleep(0.05)
    return None


def _produce_lane(
    sink: JetStreamEventSink,
    lane: list[CloudEventV1],
    counters: DemoCounters,
    chaos: Optional[ServerRestart],
    deadline: float,
) -> None:
    try:
        for event in lane:
            if chaos is not None:
                chaos.hold()
            ack = _publish_until_acked(sink, event, counters, deadline)
            with counters.lock:
                if ack is None:
                    counters.lost += 1
                    continue
                counters.acked += 1
                acked = counters.acked
            if chaos is not None:
                chaos.note_acked(acked)
    except Exception as exc:  # reported in the summary rather than lost in a thread
        with counters.lock:
            counters.errors.append(f"{type(exc).__name__}: {exc}")


def run_producers(
    sink: JetStreamEventSink,
    lanes: list[list[CloudEventV1]],
    counters: DemoCounters,
    chaos: Optional[ServerRestart],
) -> None:
    deadline = time.monotonic() + DEMO_DEADLINE_SECONDS
    threads = [
        threading.Thread(
            target=_produce_lane,
            args=(sink, lane, counters, chaos, deadline),
            name=f"cellos-demo-producer-{number}",
            daemon=True,
        )
        for number, lane in enumerate(lanes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
