"""``check``: can a server store the sink's events, and which stream settings weaken them."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from .._event import CloudEventV1
from .._subject import TENANT_ID_DEFAULT_TOKEN, resolve_tenant_subject
from ._exit_status import EXIT_OK, CliError
from ._output import PROG, format_bytes, format_duration, out, plural
from ._streams import (
    AUDIT_FLOOR_SECONDS,
    DEV_STREAM,
    RECOMMENDED_REPLICAS,
    RETRY_HORIZON_SECONDS,
    capture_pattern,
    describe_stream,
    name_of,
    stream_capturing,
)
from ._target import jetstream, server_version, target_from_args, with_nats

#: How many numbered names (CELLOS_2, CELLOS_3, ...) to try for a free stream name.
_FREE_NAME_TRIES = 20

#: Printed by every successful check: a client cannot read the server's fsync policy.
SYNC_INTERVAL_NOTE = (
    "sync_interval is server configuration no client can read: unless the server's "
    "jetstream block says 'sync_interval: always', an acknowledged event can be lost in a "
    "power cut of a majority of the stream's servers"
)


#: Printed when no stream captures the subject: what staging one does to running sinks.
NEXT_PROBE_NOTE = (
    "until a stream captures it, emits fail (NoStreamError, then CircuitOpenError with "
    "cause no_stream); once one does, a running sink's circuit closes on its next probe, "
    "without a restart"
)


def nats_stream_add_command(template: str, stream: str = DEV_STREAM) -> str:
    """The ``nats stream add`` command an operator runs to pre-stage a stream for ``template``.

    Settings: file storage, 3 replicas, limits retention discarding old events, the
    2-minute duplicate window of the sink's retry horizon, and 90 days (the audit floor).
    """
    settings = {
        "--storage": "file",
        "--replicas": str(RECOMMENDED_REPLICAS),
        "--retention": "limits",
        "--discard": "old",
        "--dupe-window": format_duration(RETRY_HORIZON_SECONDS),
        "--max-age": format_duration(AUDIT_FLOOR_SECONDS),
    }
    words = ["nats", "stream", "add", stream, "--subjects", capture_pattern(template)]
    for flag, value in settings.items():
        words += [flag, value]
    return shlex.join([*words, "--defaults"])


def stream_warnings(config: api.StreamConfig) -> list[str]:
    """Say where a stream's settings weaken what the sink promises (one sentence each)."""
    warnings: list[str] = []
    window = float(config.duplicate_window or 0)
    if window < RETRY_HORIZON_SECONDS:
        warnings.append(
            f"duplicate window {format_duration(window)} is shorter than the sink's "
            f"{format_duration(RETRY_HORIZON_SECONDS)} retry horizon: an event re-emitted "
            f"later than that is stored twice (--dupe-window 2m)"
        )
    replicas = config.num_replicas or 1
    if replicas < RECOMMENDED_REPLICAS:
        warnings.append(
            f"{replicas} replica{'s' if replicas != 1 else ''}: losing one server can lose "
            f"stored events or stop publishing (--replicas {RECOMMENDED_REPLICAS})"
        )
    max_age = float(config.max_age or 0)
    if 0 < max_age < AUDIT_FLOOR_SECONDS:
        warnings.append(
            f"max age {format_duration(max_age)} is under the 90-day audit floor (FC-74): "
            f"events are deleted before they may be"
        )
    if config.storage == api.StorageType.MEMORY:
        warnings.append(
            "memory storage: a server restart loses every stored event (--storage file)"
        )
    if config.retention not in (None, api.RetentionPolicy.LIMITS):
        warnings.append(
            f"retention {name_of(config.retention, 'limits')!r} deletes events once "
            f"consumers have them; an audit trail needs 'limits'"
        )
    warnings.extend(_limit_warnings(config))
    if config.no_ack:
        warnings.append("no_ack is set: JetStream does not acknowledge, so every emit times out")
    if config.sealed:
        warnings.append("the stream is sealed: it refuses every new event")
    if config.mirror is not None:
        warnings.append("the stream is a mirror: it does not accept published events")
    return warnings


def _limit_warnings(config: api.StreamConfig) -> list[str]:
    warnings: list[str] = []
    limits = ", ".join(
        f"{name}={value}"
        for name, value in (
            ("max_msgs", config.max_msgs),
            ("max_bytes", config.max_bytes),
            ("max_msgs_per_subject", config.max_msgs_per_subject),
        )
        if value is not None and value > 0
    )
    # discard_new_per_subject came with nats-py 2.10.
    per_subject = getattr(config, "discard_new_per_subject", None)
    if limits and (config.discard == api.DiscardPolicy.NEW or per_subject):
        warnings.append(
            f"discard policy 'new' with {limits}: once full, JetStream refuses new events "
            f"(emit raises PublishError)"
        )
    elif limits:
        warnings.append(
            f"{limits} with discard policy 'old': once reached, the oldest events are "
            f"deleted silently"
        )
    if config.max_msg_size is not None and config.max_msg_size > 0:
        warnings.append(f"max_msg_size={config.max_msg_size}: larger events are refused")
    return warnings


@dataclass(frozen=True)
class CheckFindings:
    """What ``check`` learnt from the server."""

    server_version: str
    max_payload: int
    account: Optional[api.AccountInfo]
    stream: Optional[api.StreamInfo]
    #: With no stream capturing the subject: the stream of the name to suggest, if one
    #: of that name exists already (capturing other subjects).
    name_taken_by: Optional[api.StreamInfo] = None
    #: ... and then a name no stream has, to suggest instead.
    free_name: Optional[str] = None
    #: Streams holding subjects that overlap the capture pattern without capturing the
    #: subject: JetStream then refuses the pattern in any other stream.
    overlapping: tuple[api.StreamInfo, ...] = ()


async def _stream_named(js: JetStreamContext, name: str) -> Optional[api.StreamInfo]:
    try:
        return await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return None


async def _all_streams(js: JetStreamContext) -> Any:
    for info in await js.streams_info():
        yield info


def subjects_overlap(first: str, second: str) -> bool:
    """Whether some subject matches both NATS subject patterns."""
    a, b = first.split("."), second.split(".")
    for x, y in zip(a, b):
        if x == ">" or y == ">":
            return True
        if "*" not in (x, y) and x != y:
            return False
    return len(a) == len(b)


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject ``subject`` matches also matches ``pattern``."""
    p, s = pattern.split("."), subject.split(".")
    for i, part in enumerate(p):
        if part == ">":
            return i < len(s)
        # A literal token covers only itself (not a wildcard); "*" covers any one token.
        if i >= len(s) or s[i] == ">" or part not in ("*", s[i]):
            return False
    return len(p) == len(s)


async def _gather_check_findings(
    client: Client, subject: str, template: str, wanted: str = DEV_STREAM
) -> CheckFindings:
    js = jetstream(client)
    version = server_version(client)
    try:
        account = await js.account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        return CheckFindings(version, client.max_payload, None, None)
    except nats.js.errors.APIError as exc:
        if exc.code == 503:
            return CheckFindings(version, client.max_payload, None, None)
        raise
    name = await stream_capturing(js, subject)
    if name is not None:
        stream = await js.stream_info(name)
        return CheckFindings(version, client.max_payload, account, stream)
    pattern = capture_pattern(template)
    overlapping = tuple(
        [
            info
            async for info in _all_streams(js)
            if any(subjects_overlap(pattern, held) for held in info.config.subjects or [])
        ]
    )
    if overlapping:
        return CheckFindings(version, client.max_payload, account, None, overlapping=overlapping)
    taken_by = await _stream_named(js, wanted)
    free_name = None
    if taken_by is not None:
        for number in range(2, _FREE_NAME_TRIES + 2):
            if await _stream_named(js, f"{wanted}_{number}") is None:
                free_name = f"{wanted}_{number}"
                break
    return CheckFindings(version, client.max_payload, account, None, taken_by, free_name)


def _check_subject(template: str, tenant: Optional[str]) -> str:
    extensions = {} if tenant is None else {"tenantid": tenant}
    probe = CloudEventV1(id="check", source=f"/{PROG}", type="check", extensions=extensions)
    return resolve_tenant_subject(template, probe)


def cmd_check(args: argparse.Namespace) -> int:
    target = target_from_args(args)
    template: str = args.subject
    tenant: Optional[str] = args.tenant
    subject = _check_subject(template, tenant)
    wanted: str = args.stream or DEV_STREAM
    findings = with_nats(
        target, lambda client: _gather_check_findings(client, subject, template, wanted)
    )
    out(
        f"server      {target.display_url} (nats-server {findings.server_version}, "
        f"max_payload {format_bytes(findings.max_payload)})"
    )
    if findings.account is None:
        out("jetstream   not enabled for this account")
        raise CliError(
            f"JetStream is not enabled on {target.display_url} for this account; the sink "
            f"cannot store events there (enable it in the server configuration)"
        )
    account = findings.account
    out(
        f"jetstream   enabled ({plural(account.streams, 'stream')}, "
        f"{plural(account.consumers, 'consumer')})"
    )
    shown_tenant = tenant if tenant is not None else f"{TENANT_ID_DEFAULT_TOKEN} (no tenant)"
    via = f" (template {template}, tenant {shown_tenant})" if template != subject else ""
    out(f"subject     {subject}{via}")
    if findings.stream is None:
        return _report_missing_stream(template, subject, wanted, findings)
    return _report_stream(findings.stream, template, args.stream)


def nats_stream_edit_command(name: str, subjects: Sequence[str], template: str) -> str:
    """The ``nats stream edit`` command that adds ``template``'s subjects to stream ``name``.

    ``--subjects`` replaces a stream's list, so the command repeats the ones it has.
    """
    words = ["nats", "stream", "edit", name]
    for pattern in [*subjects, capture_pattern(template)]:
        words += ["--subjects", pattern]
    return shlex.join(words)


def _report_overlap(template: str, subject: str, streams: Sequence[api.StreamInfo]) -> None:
    pattern = capture_pattern(template)
    out(f"stream      none captures {subject}")
    for info in streams:
        clashing = [held for held in info.config.subjects or [] if subjects_overlap(pattern, held)]
        out(
            f"            stream {info.config.name} holds {', '.join(clashing)}, which overlaps "
            f"{pattern}; JetStream keeps a subject in one stream only"
        )
    [only] = streams if len(streams) == 1 else [None]
    subjects = list(only.config.subjects or []) if only is not None else []
    if only is not None and all(
        subject_covers(pattern, held) for held in subjects if subjects_overlap(pattern, held)
    ):
        kept = [held for held in subjects if not subjects_overlap(pattern, held)]
        name = str(only.config.name)
        out(f"The operator must widen {name} to the pattern (the list replaces its subjects):")
        words = ["nats", "stream", "edit", name]
        for held in [*kept, pattern]:
            words += ["--subjects", held]
        out(f"  {shlex.join(words)}")
        out(f"note        {NEXT_PROBE_NOTE}")
        raise CliError(
            f"no JetStream stream captures {subject}; widen stream {name} to {pattern} "
            f"(see the command above)"
        )
    out("The operator must rearrange those streams' subjects so that one stream holds it.")
    out(f"note        {NEXT_PROBE_NOTE}")
    raise CliError(
        f"no JetStream stream captures {subject}, and {pattern} overlaps subjects of other "
        f"streams (see above)"
    )


def _report_missing_stream(
    template: str, subject: str, wanted: str, findings: CheckFindings
) -> int:
    if findings.overlapping:
        _report_overlap(template, subject, findings.overlapping)
    existing = findings.name_taken_by
    if existing is None:
        out(f"stream      none captures {subject}")
        out("The operator must pre-stage one, for example:")
        out(f"  {nats_stream_add_command(template, wanted)}")
        out(f"note        {NEXT_PROBE_NOTE}")
        raise CliError(
            f"no JetStream stream captures {subject}; create one (see the command above)"
        )
    subjects = list(existing.config.subjects or [])
    out(
        f"stream      none captures {subject}; stream {wanted} exists with subjects "
        f"{', '.join(subjects) or '(none)'}"
    )
    out(f"The operator must add the subject to {wanted} (the list replaces its subjects):")
    out(f"  {nats_stream_edit_command(wanted, subjects, template)}")
    if findings.free_name is not None:
        out("or pre-stage a stream of its own, for example:")
        out(f"  {nats_stream_add_command(template, findings.free_name)}")
    out(f"note        {NEXT_PROBE_NOTE}")
    raise CliError(
        f"no JetStream stream captures {subject}; add it to stream {wanted} or create "
        f"another stream (see the commands above)"
    )


def _report_stream(info: api.StreamInfo, template: str, expected: Optional[str]) -> int:
    name = info.config.name or "?"
    out(f"stream      {name} captures it: {describe_stream(info)}")
    if expected is not None and expected != name:
        raise CliError(
            f"stream {name} captures the subject, not {expected}: a sink with "
            f"stream={expected!r} would fail every publish with StreamMismatchError"
        )
    warnings = stream_warnings(info.config)
    for warning in warnings:
        out(f"warning     {warning}")
    out(f"note        {SYNC_INTERVAL_NOTE}")
    verdict = "OK" if not warnings else f"OK with {plural(len(warnings), 'warning')}"
    out(f"result      {verdict}: the sink can publish {template} to stream {name}")
    return EXIT_OK
