"""The cost of building and validating a ``CloudEventV1`` next to ``json.dumps`` of a dict.

Run from the repository root (no server needed, about 30 seconds)::

    python benchmarks/event_bench.py            # add --json PATH for a JSON document

Two views, on the supervisor lifecycle event of ``bench.py`` (~400 bytes of JSON):

* isolated, on one fixed dict: ``json.dumps(d).encode()`` against
  ``CloudEventV1.from_dict(d)``, ``to_json()``, both together, and ``create(...)`` with the
  id and time given;
* per event, built as ``bench.py``'s "built in the loop" feed does: a fresh dict per event
  (new UUID, the current time) then ``json.dumps`` (what raw nats-py sends) against
  ``CloudEventV1.from_dict(d).to_json()`` and ``CloudEventV1.create(...).to_json()``
  (``create`` draws the UUID and reads the clock itself).

Each figure is the best (lowest) per-call mean over interleaved repeats, in µs: on a
shared machine, other processes only ever add time, so the minimum is the steadiest
estimate of the cost itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import create_event, event_dict, git_revision  # the same events as bench.py

from cellos_sink_jetstream import CloudEventV1

TARGET_RATIO = 1.2  # building + validating + serialising / json.dumps, per event   <=


def _create_args(i: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    d = event_dict(i)
    return (d["type"], d["source"], d["data"]), {
        "subject": d["subject"],
        "datacontenttype": d["datacontenttype"],
        "extensions": {"tenantid": d["tenantid"]},
    }


def measure(
    cases: dict[str, Callable[[int], object]], calls: int, repeats: int
) -> dict[str, float]:
    """Lowest over ``repeats`` (interleaved across cases) of the mean µs per call."""
    runs: dict[str, list[float]] = {name: [] for name in cases}
    perf = time.perf_counter_ns
    for case in cases.values():  # warm-up
        for i in range(calls // 10):
            case(i)
    for _ in range(repeats):
        for name, case in cases.items():
            t0 = perf()
            for i in range(calls):
                case(i)
            runs[name].append((perf() - t0) / calls / 1e3)
    return {name: round(min(values), 3) for name, values in runs.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5_000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    fixed = event_dict(42)
    event = CloudEventV1.from_dict(fixed)
    moment = datetime.now(timezone.utc)
    (c_args, c_kwargs) = _create_args(42)
    fixed_id = fixed["id"]

    isolated = measure(
        {
            "json.dumps(d)": lambda i: json.dumps(fixed).encode(),
            "from_dict(d)": lambda i: CloudEventV1.from_dict(fixed),
            "to_json()": lambda i: event.to_json(),
            "from_dict(d).to_json()": lambda i: CloudEventV1.from_dict(fixed).to_json(),
            "create(id, time given).to_json()": lambda i: CloudEventV1.create(
                *c_args, id=fixed_id, time=moment, **c_kwargs
            ).to_json(),
            "str(uuid.uuid4())": lambda i: str(uuid.uuid4()),
            "datetime.now(utc).isoformat()": lambda i: datetime.now(timezone.utc).isoformat(),
        },
        args.calls,
        args.repeats,
    )

    def raw_built(i: int) -> bytes:
        return json.dumps(event_dict(i)).encode()

    def from_dict_built(i: int) -> bytes:
        return CloudEventV1.from_dict(event_dict(i)).to_json()

    def create_built(i: int) -> bytes:
        return create_event(i).to_json()

    def dict_only(i: int) -> dict[str, Any]:
        return event_dict(i)

    per_event = measure(
        {
            "dict": dict_only,
            "dict + json.dumps": raw_built,
            "dict + from_dict + to_json": from_dict_built,
            "create + to_json": create_built,
        },
        args.calls,
        args.repeats,
    )

    ratios = {
        "isolated: from_dict+to_json / json.dumps": isolated["from_dict(d).to_json()"]
        / isolated["json.dumps(d)"],
        "isolated: create+to_json / json.dumps": isolated["create(id, time given).to_json()"]
        / isolated["json.dumps(d)"],
        "per event: dict+from_dict+to_json / dict+json.dumps": per_event[
            "dict + from_dict + to_json"
        ]
        / per_event["dict + json.dumps"],
        "per event: create+to_json / dict+json.dumps": per_event["create + to_json"]
        / per_event["dict + json.dumps"],
    }
    print(
        f"library {git_revision()}; Python {sys.version.split()[0]}; "
        f"µs per call (best of {args.repeats})"
    )
    print("isolated, one fixed dict:")
    for name, us in isolated.items():
        print(f"  {name:<36} {us:>7.2f}")
    print("per event, built in the loop (fresh UUID and time):")
    for name, us in per_event.items():
        print(f"  {name:<36} {us:>7.2f}")
    print("ratios:")
    for name, value in ratios.items():
        mark = "ok  " if value <= TARGET_RATIO else "over"
        print(f"  {mark} {name:<52} {value:5.2f}  (target <= {TARGET_RATIO})")
    if args.json:
        document = {
            "git": git_revision(),
            "python": sys.version.split()[0],
            "isolated_us": isolated,
            "per_event_us": per_event,
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
