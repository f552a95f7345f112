"""The README's Observability examples run as written and do what their comments say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests._nats import read_stream
from tests.conftest import StagedStream

README = Path(__file__).resolve().parent.parent / "README.md"
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def example_after(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no python example after {heading!r}"
    return match.group(1)


def test_the_trace_example_stores_the_spans_traceparent(
    stream: StagedStream, tmp_path: Path
) -> None:
    script = tmp_path / "trace_example.py"
    script.write_text(example_after("### Trace context in every event"), encoding="utf-8")
    env = {**os.environ, "NATS_URL": stream.url}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [message] = read_stream(stream.url, stream.name)
    stored = json.loads(message.data)
    assert stored["tenantid"] == "acme"
    assert TRACEPARENT.fullmatch(stored.get("traceparent", "")), stored
