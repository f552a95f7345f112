"""The demo's events: cell lifecycles of several tenants, one list per producer thread."""

from __future__ import annotations

import random
from typing import Any

from .._event import CloudEventV1

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
