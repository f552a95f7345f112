"""The demo's events: what it emits, where, and whether the stream holds them all once.

The workload (cell lifecycles of several tenants), the stream it writes to, and the
verdict comparing what the stream holds afterwards with what was emitted.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client

from .._event import CloudEventV1
from .._subject import TENANT_ID_PLACEHOLDER
from ._exit_status import CliError
from ._output import PROG
from ._streams import (
    DEV_STREAM,
    DEV_STREAM_SUBJECTS,
    StoredMessage,
    capture_pattern,
    deliver_stored,
    dev_stream_config,
    ensure_stream,
    stream_capturing,
)
from ._target import jetstream

#: Subject template of the demo's events.
DEMO_SUBJECT_TEMPLATE = "cellos.events.{tenantId}.lifecycle"
#: The demo's tenants, carried in the ``tenantid`` extension.
DEMO_TENANTS = ("acme", "globex")

_DEMO_SOURCE = "/cellos/supervisor/demo-node-1"
_CELL_KINDS = ("build", "test", "lint", "package", "scan")
_STDOUT_LINES = (
    "resolving dependencies",
    "compiling 42 modules",
    "running 128 tests",
    "all checks passed",
    "writing artifact to /out/app.tar",
    "cache hit: 87%",
)


def _cell_lifecycle(
    rng: random.Random, demo_id: str, number: int, tenant: str
) -> list[CloudEventV1]:
    run_id = f"run-{demo_id}-{number:04d}"
    cell_id = f"cell-{rng.choice(_CELL_KINDS)}-{number:04d}"
    base = {"runId": run_id, "cellId": cell_id}
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "cell.created",
            {
                **base,
                "image": "registry.local/cellos/worker:1.4.2",
                "resources": {"cpu": rng.choice((1, 2, 4)), "memoryMiB": 512},
            },
        ),
        ("cell.started", {**base, "pid": rng.randint(1000, 65000)}),
    ]
    steps.extend(
        ("cell.stdout", {**base, "seq": line, "line": rng.choice(_STDOUT_LINES)})
        for line in range(rng.randint(1, 4))
    )
    exit_code = 0 if rng.random() < 0.9 else 1
    steps.append(
        ("cell.exited", {**base, "exitCode": exit_code, "durationMs": rng.randint(40, 5000)})
    )
    steps.append(("cell.destroyed", dict(base)))
    return [
        CloudEventV1.create(
            kind,
            _DEMO_SOURCE,
            data,
            id=f"{run_id}-{step}",
            subject=cell_id,
            extensions={"tenantid": tenant, "runid": run_id},
        )
        for step, (kind, data) in enumerate(steps)
    ]


def build_demo_workload(
    total: int, threads: int, *, demo_id: str, seed: int = 7
) -> list[list[CloudEventV1]]:
    """Make ``total`` lifecycle events of cell runs, one list per producer thread.

    Each run (created, started, a few stdout lines, exited, destroyed) belongs to one
    tenant of :data:`DEMO_TENANTS`, in turn, and is emitted by one thread, in order.
    """
    rng = random.Random(seed)
    lanes: list[list[CloudEventV1]] = [[] for _ in range(threads)]
    made = number = 0
    while made < total:
        tenant = DEMO_TENANTS[number % len(DEMO_TENANTS)]
        events = _cell_lifecycle(rng, demo_id, number, tenant)[: total - made]
        lanes[number % threads].extend(events)
        made += len(events)
        number += 1
    return lanes


@dataclass(frozen=True)
class DemoStream:
    """The stream the demo writes to, and where its events start."""

    name: str
    start_seq: int


async def prepare_demo_stream(client: Client, stage: bool) -> DemoStream:
    js = jetstream(client)
    subjects = [DEMO_SUBJECT_TEMPLATE.replace(TENANT_ID_PLACEHOLDER, t) for t in DEMO_TENANTS]
    names = {await stream_capturing(js, subject) for subject in subjects}
    if names == {None} and stage:
        await ensure_stream(js, dev_stream_config())
        names = {await stream_capturing(js, subject) for subject in subjects}
    if None in names:
        raise CliError(
            f"no JetStream stream captures {capture_pattern(DEMO_SUBJECT_TEMPLATE)}; pass "
            f"--stage to create {DEV_STREAM} on {DEV_STREAM_SUBJECTS[0]}, or see "
            f"`{PROG} check --subject '{DEMO_SUBJECT_TEMPLATE}'`"
        )
    if len(names) != 1:
        raise CliError(
            f"the demo's tenants are captured by different streams: {sorted(map(str, names))}"
        )
    name = str(names.pop())
    state = (await js.stream_info(name)).state
    return DemoStream(name, state.last_seq + 1)


async def read_demo_events(client: Client, stream: DemoStream) -> list[StoredMessage]:
    stored: list[StoredMessage] = []
    await deliver_stored(
        jetstream(client),
        stream.name,
        capture_pattern(DEMO_SUBJECT_TEMPLATE),
        stream.start_seq,
        stored.append,
    )
    return stored


@dataclass(frozen=True)
class DemoVerdict:
    """How the events read back compare with those emitted."""

    per_subject: dict[str, int]
    expected: int
    stored_once: int
    missing: int
    duplicated: int
    out_of_order_lanes: int

    @property
    def ok(self) -> bool:
        """Every event stored exactly once, each thread's events in emit order."""
        return (
            self.stored_once == self.expected
            and not self.missing
            and not self.duplicated
            and not self.out_of_order_lanes
        )


def verify_demo(lanes: list[list[CloudEventV1]], stored: list[StoredMessage]) -> DemoVerdict:
    """Compare what the producers emitted with what the stream holds."""
    copies: Counter[str] = Counter()
    seq_of: dict[str, int] = {}
    per_subject: Counter[str] = Counter()
    for message in stored:
        try:
            event_id = str(json.loads(message.data)["id"])
        except (ValueError, KeyError, TypeError):
            continue
        copies[event_id] += 1
        seq_of.setdefault(event_id, message.seq)
        per_subject[message.subject] += 1
    expected_ids = [event.id for lane in lanes for event in lane]
    out_of_order = 0
    for lane in lanes:
        seqs = [seq_of[event.id] for event in lane if event.id in seq_of]
        out_of_order += any(a >= b for a, b in zip(seqs, seqs[1:]))
    return DemoVerdict(
        per_subject=dict(sorted(per_subject.items())),
        expected=len(expected_ids),
        stored_once=sum(1 for i in expected_ids if copies[i] == 1),
        missing=sum(1 for i in expected_ids if copies[i] == 0),
        duplicated=sum(1 for i in expected_ids if copies[i] > 1),
        out_of_order_lanes=out_of_order,
    )
