"""The demo's producer threads: publish every event until it is acknowledged."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

from .._errors import CircuitOpenError, PublishError
from .._event import CloudEventV1
from .._publisher import PubAck
from .._retry import with_retry
from .._sink import JetStreamEventSink
from ._demo_chaos import ServerRestart

#: How often a producer tries an event before giving up on it: with waits of at most
#: :data:`DEMO_MAX_WAIT_SECONDS`, about a minute.
DEMO_ATTEMPTS = 120
DEMO_MAX_WAIT_SECONDS = 0.5


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
    sink: JetStreamEventSink, event: CloudEventV1, counters: DemoCounters
) -> Optional[PubAck]:
    """Publish ``event`` (same id every time) until JetStream acknowledges it, or give up."""

    def attempt() -> PubAck:
        try:
            return sink.publish(event)
        except CircuitOpenError:
            with counters.lock:
                counters.fast_fails += 1
            raise
        except PublishError:
            with counters.lock:
                counters.retried += 1
            raise

    try:
        return with_retry(
            DEMO_ATTEMPTS, attempt, retry_on=(PublishError,), max_delay=DEMO_MAX_WAIT_SECONDS
        )
    except PublishError:
        return None


def _produce_lane(
    sink: JetStreamEventSink,
    lane: list[CloudEventV1],
    counters: DemoCounters,
    chaos: Optional[ServerRestart],
) -> None:
    try:
        for event in lane:
            if chaos is not None:
                chaos.hold()
            ack = _publish_until_acked(sink, event, counters)
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
    threads = [
        threading.Thread(
            target=_produce_lane,
            args=(sink, lane, counters, chaos),
            name=f"cellos-demo-producer-{number}",
            daemon=True,
        )
        for number, lane in enumerate(lanes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
