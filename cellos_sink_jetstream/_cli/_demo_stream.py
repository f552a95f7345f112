"""The stream the demo writes to, and reading its events back."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client

from .._subject import TENANT_ID_PLACEHOLDER
from ._demo_workload import DEMO_SUBJECT_TEMPLATE, DEMO_TENANTS
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
