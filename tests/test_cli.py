"""The ``cellos-jetstream`` command line, end to end against real nats-server processes.

Most tests call ``main([...])`` in-process and read the output with ``capsys``; the
commands that own a process (``dev-server``, ``tail --follow``, ``python -m``) run as
subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import pytest
from nats.aio.client import Client
from nats.js import api

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, PubAck, PublishTimeoutError
from cellos_sink_jetstream._cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EmitTally,
    Emitter,
    Progress,
    build_demo_workload,
    capture_pattern,
    main,
    nats_stream_add_command,
    stream_warnings,
)
from cellos_sink_jetstream._cli._check import subject_covers, subjects_overlap
from cellos_sink_jetstream._server import free_port
from tests._nats import TLSFiles, publish, read_stream, run, stage_stream
from tests.conftest import ServerFactory, StagedStream

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "cellos.events.{tenantId}"
ERROR_PREFIX = "cellos-jetstream: error: "


def event_line(event_id: str, tenant: str = "acme", **extra: Any) -> str:
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/supervisor",
        "type": "cell.started",
        "tenantid": tenant,
        "data": {"cell": event_id},
        **extra,
    }
    return json.dumps(body)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored_ids(stream: StagedStream) -> list[str]:
    return [json.loads(m.data)["id"] for m in read_stream(stream.url, stream.name)]


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, stderr
    return errors[0][len(ERROR_PREFIX) :]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NATS_CA_FILE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class LineReader:
    """Reads a subprocess's stdout on a thread, so waiting for a line can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=self._pump, args=(stdout,), daemon=True).start()

    def _pump(self, stdout: Any) -> None:
        for line in stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line matching {pattern!r} in {self.seen}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"output ended without {pattern!r}: {self.seen}"
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


def run_module(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cellos_sink_jetstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=str(REPO_ROOT),
        check=False,
    )


# -- help and usage ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["emit"], ["check"], ["dev-server"], ["demo"], ["tail"]])
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("usage: cellos-jetstream")
    assert "exit status: 0" in out


def test_module_help_as_a_subprocess() -> None:
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in ("emit", "check", "dev-server", "demo", "tail"):
        assert command in result.stdout


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emit", "file.jsonl"]) == EXIT_UNREACHABLE  # --subject missing
    assert "--subject" in capsys.readouterr().err
    assert main(["demo", "--events", "0"]) == EXIT_UNREACHABLE
    assert main([]) == EXIT_UNREACHABLE


# -- emit ---------------------------------------------------------------------------------------


def test_emit_skips_an_invalid_line_and_names_it(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(
        tmp_path / "events.jsonl",
        event_line("e1", "acme"),
        "{not json",
        "",
        event_line("e2", "bad tenant"),
        event_line("e3", "globex"),
    )
    status = main(["emit", str(events), "--subject", TEMPLATE, "--url", stream.url])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    assert "line 2: invalid CloudEvent: the text is not valid JSON: " in captured.err
    assert "line 4: the tenant id 'bad tenant'" in captured.err
    assert "published   2 (2 new, 0 duplicates)" in captured.out
    assert "invalid     2 lines skipped" in captured.out
    assert re.search(r"rate\s+\d+ events/s", captured.out)
    messages = read_stream(stream.url, stream.name)
    assert [(m.subject, json.loads(m.data)["id"]) for m in messages] == [
        ("cellos.events.acme", "e1"),
        ("cellos.events.globex", "e3"),
    ]


def test_emit_reports_json_errors_at_the_file_line_not_json_s(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(
        tmp_path / "events.jsonl",
        *(event_line(f"j{n}") for n in range(8)),
        '{"specversion": "1.0", "id": ',  # line 9, cut short
        '{"specversion" "1.0"}',  # line 10, a colon missing
    )
    status = main(["emit", str(events), "--subject", TEMPLATE, "--url", stream.url])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    reports = [line for line in captured.err.splitlines() if "not valid JSON" in line]
    assert reports == [
        "cellos-jetstream: line 9: invalid CloudEvent: the text is not valid JSON: Expecting "
        "value at the end of the text (it is cut short); skipped",
        "cellos-jetstream: line 10: invalid CloudEvent: the text is not valid JSON: Expecting "
        "':' delimiter at column 16; skipped",
    ]
    assert "'(event)'" not in captured.err


def test_emit_names_an_event_too_large_for_the_server_as_such(
    nats_server_factory: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory(max_payload=2048)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"])
    events = write_lines(
        tmp_path / "events.jsonl",
        event_line("small-1"),
        json.dumps(
            {"specversion": "1.0", "id": "big", "source": "/s", "type": "t", "data": "x" * 4096}
        ),
        event_line("small-2"),
    )
    status = main(["emit", str(events), "--subject", TEMPLATE, "--url", server.url])
    captured = capsys.readouterr()
    assert status == EXIT_OK, captured.err
    report = [line for line in captured.err.splitlines() if "line 2" in line]
    assert len(report) == 1, captured.err
    assert report[0].startswith("cellos-jetstream: line 2: CloudEvent too large: ")
    assert "over the server's max_payload of 2048 bytes" in report[0]
    assert "attribute" not in report[0]
    assert [json.loads(m.data)["id"] for m in read_stream(server.url, "CELLOS")] == [
        "small-1",
        "small-2",
    ]


def test_emit_quiet_prints_no_summary(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(tmp_path / "e.jsonl", event_line("q1"), "{bad", event_line("q2"))
    argv = ["emit", str(events), "--subject", TEMPLATE, "--url", stream.url, "-q"]
    assert main([*argv, "--progress-interval", "0.000001"]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "published" not in captured.err
    assert "line 2: invalid CloudEvent" in captured.err  # problems are still reported
    assert stored_ids(stream) == ["q1", "q2"]


def test_emit_strict_stops_at_the_invalid_line(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(
        tmp_path / "events.jsonl",
        event_line("s1"),
        '{"specversion": "1.0", "id": "no-source", "type": "cell.started"}',
        event_line("s3"),
    )
    status = main(["emit", str(events), "--subject", TEMPLATE, "--url", stream.url, "--strict"])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    error = one_error_line(captured.err)
    assert error.startswith("line 2: invalid CloudEvent attribute 'source'")
    assert "--strict" in error
    assert stored_ids(stream) == ["s1"]


def test_emit_rerun_shows_everything_as_duplicates(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(tmp_path / "e.jsonl", *(event_line(f"r{n}", "acme") for n in range(50)))
    argv = ["emit", str(events), "--subject", TEMPLATE, "--url", stream.url, "--stream", "CELLOS"]
    assert main(argv) == EXIT_OK
    assert "published   50 (50 new, 0 duplicates)" in capsys.readouterr().out
    assert main(argv) == EXIT_OK
    assert "published   50 (0 new, 50 duplicates)" in capsys.readouterr().out
    assert stored_ids(stream) == [f"r{n}" for n in range(50)]


def test_emit_reads_stdin_in_order(
    stream: StagedStream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "\n".join(event_line(f"in{n}", "globex") for n in range(20)) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["emit", "-", "--subject", TEMPLATE, "--url", stream.url]) == EXIT_OK
    assert "emitted stdin" in capsys.readouterr().out
    assert stored_ids(stream) == [f"in{n}" for n in range(20)]


def test_emit_prints_plain_progress_lines_when_not_a_tty(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(tmp_path / "e.jsonl", *(event_line(f"p{n}") for n in range(300)))
    argv = ["emit", str(events), "--subject", TEMPLATE, "--url", stream.url, "--window", "4"]
    assert main([*argv, "--progress-interval", "0.000001"]) == EXIT_OK
    progress = [line for line in capsys.readouterr().err.splitlines() if "published" in line]
    assert progress, "no progress line"
    assert all("\r" not in line and "events/s" in line for line in progress)


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    now = [0.0]
    progress = Progress(terminal, interval=1.0, clock=lambda: now[0])
    tally = EmitTally(published=3)
    progress.update(tally)
    assert terminal.getvalue() == "", "nothing is shown before the interval passed"
    now[0] = 1.0
    progress.update(tally)
    progress.message("line 7: skipped")
    progress.clear()
    text = terminal.getvalue()
    assert text.startswith("\r\x1b[2Kcellos-jetstream: 3 published")
    assert "\n" not in text.split("line 7")[0]  # the progress line itself has no newline
    assert "\r\x1b[2Kline 7: skipped\n" in text


def test_emit_failure_exits_non_zero_and_stops(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(tmp_path / "e.jsonl", event_line("f1"), event_line("f2"))
    argv = ["emit", str(events), "--subject", "nobody.listens.{tenantId}", "--url", stream.url]
    status = main([*argv, "--window", "1"])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert "line 1: event 'f1' not acknowledged: no JetStream stream captures" in captured.err
    assert "event 'f2'" not in captured.err  # stopped at the first failure
    assert one_error_line(captured.err).startswith("1 event not acknowledged, stopped at line 1")
    assert "failed      1" in captured.out


def test_emitter_shows_why_an_event_timed_out() -> None:
    class TimesOut:
        async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> PubAck:
            raise PublishTimeoutError("the connection dropped before the ack arrived")

    messages = io.StringIO()
    with JetStreamEventSink.from_publisher(TimesOut(), TEMPLATE) as sink:
        emitter = Emitter(sink, TEMPLATE, Progress(messages, enabled=False), window=1)
        tally = emitter.run([(1, event_line("x").encode()), (2, event_line("y").encode())])
    assert (tally.published, tally.failed, emitter.stopped_at) == (0, 1, 1)
    assert "line 1: event 'x' not acknowledged: the connection dropped" in messages.getvalue()


def test_emit_missing_file_is_a_usage_error(
    stream: StagedStream, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.jsonl"
    status = main(["emit", str(missing), "--subject", "x", "--url", stream.url])
    assert status == EXIT_USAGE
    error = one_error_line(capsys.readouterr().err)
    assert error == f"cannot read {missing}: No such file or directory"


# -- check --------------------------------------------------------------------------------------


def test_check_with_the_staged_stream(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["check", "--subject", "cellos.events.{tenantId}.lifecycle", "--url", stream.url])
    out = capsys.readouterr().out
    assert status == EXIT_OK
    assert "jetstream   enabled" in out
    assert "subject     cellos.events._default.lifecycle" in out
    assert "stream      CELLOS captures it" in out
    assert "duplicate window 2m" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1  # a single test server: R1 is all there is to warn about
    assert "1 replica: losing one server" in warnings[0]
    assert "note        sync_interval is server configuration" in out
    assert "result      OK with 1 warning" in out


def test_check_without_a_stream_prints_the_command_to_create_one(
    nats_server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory()
    status = main(["check", "--subject", "audit.{tenantId}.cells", "--url", server.url])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert "stream      none captures audit._default.cells\n" in captured.out
    assert "nats stream add CELLOS --subjects 'audit.*.cells'" in captured.out
    assert "nats stream edit" not in captured.out
    assert one_error_line(captured.err).startswith("no JetStream stream captures")


def test_check_when_the_suggested_name_is_taken_says_how_to_add_the_subject(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    # CELLOS exists (on cellos.events.>) and so does CELLOS_2: neither may be re-added.
    stage_stream(stream.url, "CELLOS_2", ["other.>"])
    status = main(["check", "--subject", "audit.{tenantId}.cells", "--url", stream.url])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert (
        "stream      none captures audit._default.cells; stream CELLOS exists with "
        "subjects cellos.events.>" in captured.out
    )
    edit = "nats stream edit CELLOS --subjects 'cellos.events.>' --subjects 'audit.*.cells'"
    assert f"  {edit}\n" in captured.out
    assert "nats stream add CELLOS " not in captured.out
    assert "nats stream add CELLOS_3 --subjects 'audit.*.cells'" in captured.out
    error = one_error_line(captured.err)
    assert error.startswith("no JetStream stream captures audit._default.cells; add it to stream")


@pytest.mark.parametrize(
    ("a", "b", "overlap", "a_covers_b"),
    [
        ("audit.*.cells", "audit.acme.cells", True, True),
        ("audit.*.cells", "audit.x", False, False),
        ("audit.*", "audit.>", True, False),
        ("audit.>", "audit.a.b", True, True),
        ("audit.>", "audit", False, False),
        ("a.*.c", "a.b.*", True, False),
        ("a.b", "a.b", True, True),
        ("a.*", "a.*", True, True),
        ("a.b.c", "a.b", False, False),
    ],
)
def test_subject_overlap_and_cover(a: str, b: str, overlap: bool, a_covers_b: bool) -> None:
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap
    assert subject_covers(a, b) is a_covers_b


def test_check_when_a_stream_holds_part_of_the_subjects_suggests_widening_it(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    # JetStream keeps a subject in one stream only: with PARTIAL on audit.acme.cells, both
    # adding audit.*.cells to CELLOS and a new stream on it are refused ("subjects overlap").
    stage_stream(stream.url, "PARTIAL", ["audit.acme.cells", "audit.x"])
    status = main(["check", "--subject", "audit.{tenantId}.cells", "--url", stream.url])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert "stream PARTIAL holds audit.acme.cells, which overlaps audit.*.cells" in captured.out
    edit = "nats stream edit PARTIAL --subjects audit.x --subjects 'audit.*.cells'"
    assert f"  {edit}\n" in captured.out
    assert "nats stream add" not in captured.out
    assert "nats stream edit CELLOS" not in captured.out
    error = one_error_line(captured.err)
    assert error.startswith("no JetStream stream captures audit._default.cells; widen stream")

    # The suggested command is one JetStream accepts.
    async def widen(nc: Client) -> None:
        config = api.StreamConfig(name="PARTIAL", subjects=["audit.x", "audit.*.cells"])
        await nc.jetstream().update_stream(config)

    run(stream.url, widen)
    assert main(["check", "--subject", "audit.{tenantId}.cells", "--url", stream.url]) == 0


@pytest.mark.parametrize("name_taken", [False, True])
def test_check_without_a_stream_says_a_running_sink_recovers_on_its_next_probe(
    stream: StagedStream, capsys: pytest.CaptureFixture[str], name_taken: bool
) -> None:
    argv = ["check", "--subject", "late.{tenantId}", "--url", stream.url]
    status = main([*argv, "--stream", "CELLOS" if name_taken else "LATE"])
    captured = capsys.readouterr()
    assert status == EXIT_FAILURE
    assert (
        "note        until a stream captures it, emits fail (NoStreamError, then "
        "CircuitOpenError with cause no_stream); once one does, a running sink's circuit "
        "closes on its next probe, without a restart\n"
    ) in captured.out
    # ... which is what a sink does once the stream is staged (the suggested command's
    # subjects): tests/test_integration.py stages one under an open circuit.
    stage_stream(stream.url, "LATE", ["late.*"])
    assert main(argv) == EXIT_OK


def test_check_with_an_expected_stream_of_other_subjects_suggests_editing_it(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    stage_stream(stream.url, "AUDIT", ["audit.legacy"])
    argv = ["check", "--subject", "audit.{tenantId}", "--stream", "AUDIT", "--url", stream.url]
    assert main(argv) == EXIT_FAILURE
    out = capsys.readouterr().out
    # audit.* covers audit.legacy, and JetStream refuses both in one stream ("subject
    # overlaps"): the edit replaces it.
    assert "  nats stream edit AUDIT --subjects 'audit.*'\n" in out
    assert "nats stream add AUDIT " not in out

    async def widen(nc: Client) -> None:
        await nc.jetstream().update_stream(api.StreamConfig(name="AUDIT", subjects=["audit.*"]))

    run(stream.url, widen)
    assert main(argv) == EXIT_OK


def test_check_warns_about_a_weak_stream(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    stage_stream(
        stream.url,
        "WEAK",
        ["weak.>"],
        storage="memory",
        duplicate_window=30,
        max_age=7 * 86400,
        max_msgs=1000,
        discard=api.DiscardPolicy.NEW,
    )
    status = main(
        ["check", "--subject", "weak.{tenantId}", "--tenant", "acme", "--url", stream.url]
    )
    out = capsys.readouterr().out
    assert status == EXIT_OK
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 5, out
    text = "\n".join(warnings)
    assert "duplicate window 30s is shorter than the sink's 2m retry horizon" in text
    assert "1 replica" in text
    assert "max age 7d is under the 90-day audit floor (FC-74)" in text
    assert "memory storage" in text
    assert "discard policy 'new' with max_msgs=1000" in text
    assert "result      OK with 5 warnings" in out


def test_check_names_a_stream_other_than_the_expected_one(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["check", "--subject", TEMPLATE, "--stream", "AUDIT", "--url", stream.url]
    assert main(argv) == EXIT_FAILURE
    assert "StreamMismatchError" in one_error_line(capsys.readouterr().err)


@pytest.mark.fast_path  # see tox env publicpath
def test_check_and_emit_over_tls_trust_the_given_ca(
    nats_server_factory: ServerFactory,
    tls_files: TLSFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = nats_server_factory(cert_file=tls_files.server_cert, key_file=tls_files.server_key)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"], tls=tls_files.client_context())
    check = ["check", "--subject", TEMPLATE, "--url", server.url]
    assert main([*check, "--ca-file", str(tls_files.ca_file)]) == EXIT_OK
    assert "stream      CELLOS captures it" in capsys.readouterr().out
    assert main([*check, "--ca-file", str(tls_files.wrong_ca_file)]) == EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert "CERTIFICATE_VERIFY_FAILED" in one_error_line(captured.err)
    assert captured.err.count("\n") == 1

    monkeypatch.setenv("NATS_CA_FILE", str(tls_files.ca_file))
    events = write_lines(tmp_path / "e.jsonl", event_line("tls-1"))
    assert main(["emit", str(events), "--subject", TEMPLATE, "--url", server.url]) == EXIT_OK
    assert "published   1 (1 new, 0 duplicates)" in capsys.readouterr().out


def test_check_without_jetstream(
    nats_server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory(jetstream=False)
    assert main(["check", "--subject", TEMPLATE, "--url", server.url]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "jetstream   not enabled" in captured.out
    assert one_error_line(captured.err).startswith("JetStream is not enabled")


def test_stream_warnings_for_a_sound_stream_are_empty() -> None:
    config = api.StreamConfig(
        name="GOOD",
        subjects=["cellos.events.>"],
        storage=api.StorageType.FILE,
        num_replicas=3,
        duplicate_window=120,
        max_age=365 * 86400,
    )
    assert stream_warnings(config) == []
    limited = stream_warnings(config.evolve(max_bytes=10**9, max_msg_size=4096))
    assert limited == [
        "max_bytes=1000000000 with discard policy 'old': once reached, the oldest events are "
        "deleted silently",
        "max_msg_size=4096: larger events are refused",
    ]
    assert stream_warnings(config.evolve(discard=api.DiscardPolicy.NEW)) == []
    workqueue = config.evolve(retention=api.RetentionPolicy.WORK_QUEUE)
    assert any("'workqueue'" in w for w in stream_warnings(workqueue))


def test_capture_pattern_and_the_suggested_command() -> None:
    assert capture_pattern("cellos.events.{tenantId}.lifecycle") == "cellos.events.*.lifecycle"
    assert capture_pattern("cellos.t-{tenantId}") == "cellos.*"
    assert capture_pattern("fixed.subject") == "fixed.subject"
    command = nats_stream_add_command("a.{tenantId}", "S")
    assert command.startswith("nats stream add S --subjects 'a.*' --storage file --replicas 3")
    assert "--dupe-window 2m" in command
    assert "--max-age 90d" in command


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["emit", "-", "--subject", TEMPLATE],
        ["check", "--subject", TEMPLATE],
        ["tail", "--subject", "cellos.events.>"],
        ["demo", "--events", "5"],
    ],
)
def test_unreachable_server_is_one_line_without_credentials(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"nats://operator:hunter2@127.0.0.1:{free_port()}"
    started = time.monotonic()
    status = main([*command, "--url", url, "--connect-timeout", "0.5"])
    captured = capsys.readouterr()
    assert status == EXIT_UNREACHABLE
    assert time.monotonic() - started < 5
    error = one_error_line(captured.err)
    assert error.startswith("could not connect to NATS at nats://***@127.0.0.1:")
    assert "hunter2" not in captured.err + captured.out
    assert "operator" not in captured.err + captured.out


@pytest.mark.parametrize(
    "command",
    [
        ["emit", "-", "--subject", TEMPLATE],
        ["check", "--subject", TEMPLATE],
        ["tail", "--subject", "cellos.events.>"],
    ],
)
def test_a_refused_connection_is_reported_as_refused(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    status = main([*command, "--url", f"nats://127.0.0.1:{free_port()}"])
    error = one_error_line(capsys.readouterr().err)
    assert status == EXIT_UNREACHABLE
    assert "the connection was refused" in error
    # Nothing waited for connect_timeout, so the message must not claim it did, nor name
    # Python's exception class.
    assert "within 5s" not in error
    assert "ConnectionRefusedError" not in error


def test_bad_subject_template_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--subject", "cellos.{tenant}", "--url", "nats://x:1"]) == EXIT_USAGE
    assert "invalid subject template" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["check", "--subject", TEMPLATE, "--tenant", "bad tenant"], "tenant id 'bad tenant'"),
        (["check", "--subject", "cellos.{tenant}"], "invalid subject template"),
        (["emit", "-", "--subject", "cellos.{tenant}"], "invalid subject template"),
        (["tail", "--subject", "cellos.{tenant}"], "{tenant}"),
        (["check", "--subject", TEMPLATE, "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (["check", "--subject", TEMPLATE, "--stream", "bad name"], "--stream: 'bad name'"),
        (["emit", "-", "--subject", TEMPLATE, "--stream", "a.b"], "--stream: 'a.b'"),
        (["tail", "--subject", "cellos.events.>", "--stream", "x>"], "--stream: 'x>'"),
        (["tail", "--subject", ""], "--subject"),
    ],
)
def test_usage_errors_in_option_values_exit_2(
    argv: list[str], said: str, stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server is up: exit status 2 here cannot come from an unreachable one.
    assert main([*argv, "--url", stream.url]) == EXIT_USAGE
    assert said in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("nats://u:hunter2@127.0.0.1:notaport", "--url: the port of nats://***@127.0.0.1 is"),
        ("http://u:hunter2@127.0.0.1:4222", "--url: the scheme 'http' of http://***@127.0.0.1"),
    ],
)
def test_a_bad_url_is_a_usage_error_naming_the_part(
    url: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--subject", TEMPLATE, "--url", url]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert one_error_line(captured.err).startswith(said)
    assert "hunter2" not in captured.err + captured.out


def test_nats_url_without_a_scheme_is_read_as_nats_py_reads_it(
    stream: StagedStream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = stream.url.removeprefix("nats://")
    monkeypatch.setenv("NATS_URL", bare)
    assert main(["check", "--subject", TEMPLATE]) == EXIT_OK
    assert f"server      nats://{bare} " in capsys.readouterr().out


# -- tail -----------------------------------------------------------------------------------------


def test_tail_prints_what_was_emitted(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [event_line(f"t{n}", "acme" if n % 3 else "globex") for n in range(12)]
    events = write_lines(tmp_path / "e.jsonl", *lines)
    assert main(["emit", str(events), "--subject", TEMPLATE, "--url", stream.url]) == EXIT_OK
    capsys.readouterr()

    everything = ["tail", "--subject", "cellos.events.>", "--oneline", "--url", stream.url]
    assert main([*everything, "--all"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 12
    assert out[0].startswith("#1 cellos.events.globex - cell.started id=t0 ")
    assert out[1].endswith('id=t1 {"cell":"t1"}')
    assert main(everything) == EXIT_OK  # the 10 newest by default
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        f"#{seq}" for seq in range(3, 13)
    ]

    # The three newest acme events: found by counting from sequences, not by reading all.
    argv = ["tail", "--subject", "cellos.events.acme", "--last", "3", "--url", stream.url]
    assert main(argv) == EXIT_OK
    pretty = capsys.readouterr().out
    headers = re.findall(r"^--- #(\d+) cellos\.events\.acme stored \S+$", pretty, re.MULTILINE)
    assert headers == ["9", "11", "12"]
    bodies = [
        json.loads(chunk) for chunk in re.split(r"^--- .*$", pretty, flags=re.M) if chunk.strip()
    ]
    assert [body["id"] for body in bodies] == ["t8", "t10", "t11"]


def test_tail_reads_a_sink_template_as_its_wildcard(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    for n, tenant in enumerate(["acme", "globex", "acme"]):
        event = CloudEventV1(id=f"tpl-{n}", source="/s", type="x")
        publish(stream.url, stream.subject(tenant), event.to_json())
    argv = ["tail", "--subject", TEMPLATE, "--all", "--oneline", "--url", stream.url]
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    assert [line.split()[1] for line in captured.out.splitlines()] == [
        "cellos.events.acme",
        "cellos.events.globex",
        "cellos.events.acme",
    ]
    assert "reading cellos.events.* (the template's {tenantId} as a wildcard)" in captured.err
    assert "no events" not in captured.err


def test_tail_last_0_is_a_usage_error(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(
        stream.url, stream.subject("acme"), CloudEventV1(id="z", source="/s", type="x").to_json()
    )
    argv = ["tail", "--subject", "cellos.events.>", "--last", "0", "--url", stream.url]
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "argument --last: '0' is below the minimum of 1" in captured.err
    assert "no events" not in captured.err


def test_tail_of_an_unknown_subject_is_an_error(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--subject", "nothing.here", "--url", stream.url]) == EXIT_FAILURE
    assert "no JetStream stream captures nothing.here" in one_error_line(capsys.readouterr().err)


def test_tail_follow_prints_new_events_until_interrupted(stream: StagedStream) -> None:
    publish(
        stream.url, stream.subject("acme"), CloudEventV1(id="old", source="/s", type="x").to_json()
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellos_sink_jetstream",
            "tail",
            "--subject",
            "cellos.events.>",
            "--oneline",
            "--follow",
            "--url",
            stream.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=str(REPO_ROOT),
    )
    try:
        reader = LineReader(proc)
        reader.wait_for(r"^#1 .* id=old$")
        publish(
            stream.url,
            stream.subject("acme"),
            CloudEventV1(id="new", source="/s", type="x").to_json(),
        )
        reader.wait_for(r"^#2 .* id=new$")
        proc.send_signal(signal.SIGINT)
        status = proc.wait(10)
        assert proc.stderr is not None
        assert status == 130, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# -- dev-server -----------------------------------------------------------------------------------


def test_dev_server_runs_until_sigint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellos_sink_jetstream",
            "dev-server",
            "--port",
            "0",
            "--store",
            str(store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=str(REPO_ROOT),
    )
    try:
        reader = LineReader(proc)
        url = reader.wait_for(r"^  export NATS_URL=(nats://127\.0\.0\.1:\d+)$").group(1)
        reader.wait_for("Press Ctrl-C to stop")
        with JetStreamEventSink.connect(url, "cellos.events.{tenantId}", stream="CELLOS") as sink:
            ack = sink.publish(CloudEventV1(id="dev-1", source="/s", type="cell.created"))
        assert (ack.stream, ack.seq, ack.duplicate) == ("CELLOS", 1, False)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        reader.wait_for("nats-server stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert "error" not in stderr
    assert (store / "jetstream").is_dir()  # the store given is kept
    assert "stream    CELLOS (staged): subjects cellos.events.>; file storage" in "\n".join(
        reader.seen
    )


def test_dev_server_refuses_a_port_in_use(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    port = stream.server.port
    assert main(["dev-server", "--port", str(port)]) == EXIT_FAILURE
    assert f"port {port} on 127.0.0.1 is in use" in one_error_line(capsys.readouterr().err)


# -- demo ------------------------------------------------------------------------------------------


def test_demo_as_a_subprocess_starts_its_own_server() -> None:
    result = run_module("demo", "--events", "60", "--threads", "3")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "embedded nats-server at nats://127.0.0.1:" in result.stdout
    counts = re.findall(r"cellos\.events\.(acme|globex)\.lifecycle\s+(\d+) events", result.stdout)
    assert [tenant for tenant, _ in counts] == ["acme", "globex"]
    assert sum(int(count) for _, count in counts) == 60
    assert "stored      exactly once: 60 of 60 events once" in result.stdout
    assert "breaker     Connected; opened 0 times" in result.stdout


def test_demo_chaos_opens_and_closes_the_breaker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    status = main(["demo", "--chaos", "--events", "150", "--threads", "4"])
    out = capsys.readouterr().out
    assert status == EXIT_OK, out
    assert "chaos: stopping nats-server after 50 acknowledged events" in out
    assert "breaker OPEN" in out
    assert out.index("breaker OPEN") < out.index("breaker CLOSED")
    fast_fails = re.search(r"opened 1 time, (\d+) fast fails \(CircuitOpenError\)", out)
    assert fast_fails is not None, out
    assert int(fast_fails.group(1)) > 0
    assert "stored      exactly once: 150 of 150 events once, 0 missing, 0 duplicated" in out
    assert "each thread's order kept" in out


def test_demo_against_a_server_needs_a_stream_or_stage(
    nats_server_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory()
    assert main(["demo", "--url", server.url, "--events", "20"]) == EXIT_FAILURE
    assert "pass --stage" in one_error_line(capsys.readouterr().err)
    assert main(["demo", "--url", server.url, "--events", "20", "--stage"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "stored      exactly once: 20 of 20" in out
    assert "cellos-jetstream tail --subject 'cellos.events.*.lifecycle'" in out
    # A second run on the same stream reads back only its own events.
    assert main(["demo", "--url", server.url, "--events", "10"]) == EXIT_OK
    assert "stored      exactly once: 10 of 10" in capsys.readouterr().out


def test_demo_chaos_needs_the_embedded_server(
    stream: StagedStream, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--chaos", "--url", stream.url]) == EXIT_UNREACHABLE
    assert "--chaos restarts the server" in one_error_line(capsys.readouterr().err)


def test_demo_workload_is_per_thread_lifecycles() -> None:
    lanes = build_demo_workload(100, 3, demo_id="abc")
    events = [event for lane in lanes for event in lane]
    assert len(events) == 100
    assert len({event.id for event in events}) == 100
    assert {event.extensions["tenantid"] for event in events} == {"acme", "globex"}
    for lane in lanes:
        runs: dict[str, list[str]] = {}
        for event in lane:
            runs.setdefault(str(event.extensions["runid"]), []).append(event.type)
        for types in runs.values():
            assert types[0] == "cell.created"
            assert types[1:2] in (["cell.started"], [])


# -- a closed pipe --------------------------------------------------------------------------------


@pytest.mark.fast_path  # see tox env publicpath
def test_tail_into_a_reader_that_stops_early_exits_0_without_a_traceback(
    stream: StagedStream,
) -> None:
    # Far more than a pipe buffer holds, so tail is still writing when the reader leaves.
    with JetStreamEventSink.connect(stream.url, stream.subject("{tenantId}")) as sink:
        for n in range(600):
            sink.emit_nowait(CloudEventV1(id=f"pipe-{n}", source="/s", type="x", data="x" * 200))
        assert sink.flush(30)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellos_sink_jetstream",
            "tail",
            "--subject",
            "cellos.events.>",
            "--all",
            "--url",
            stream.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=str(REPO_ROOT),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = [proc.stdout.readline() for _ in range(2)]  # what `| head -2` does
    proc.stdout.close()
    status = proc.wait(30)
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert first[0].startswith("--- #1 ")
    assert (status, stderr) == (0, "")


def _start_dev_server(port: int, *options: str) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellos_sink_jetstream",
            "dev-server",
            "--port",
            str(port),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=str(REPO_ROOT),
    )
    return proc, LineReader(proc)


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return status, stderr


@pytest.mark.fast_path  # see tox env publicpath
def test_dev_server_restarts_on_the_same_port_after_a_stop_with_clients(tmp_path: Path) -> None:
    port = free_port()
    first, reader = _start_dev_server(port)
    try:
        url = reader.wait_for(r"^  export NATS_URL=(nats://127\.0\.0\.1:\d+)$").group(1)
        reader.wait_for("Press Ctrl-C to stop")
        sink = JetStreamEventSink.connect(url, "cellos.events.{tenantId}", stream="CELLOS")
        sink.emit(CloudEventV1(id="before-restart", source="/s", type="x"))
    finally:
        # The server closes the client's connection: its side of it now sits in TIME-WAIT.
        status, stderr = _stop(first)
    assert status == 0, stderr
    second, reader = _start_dev_server(port)
    try:
        reader.wait_for("Press Ctrl-C to stop")
    finally:
        sink.close()
        status, stderr = _stop(second)
    assert (status, stderr) == (0, "")


def test_dev_server_on_a_kept_store_says_what_it_found(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "store")]
    first, reader = _start_dev_server(0, *store)
    try:
        url = reader.wait_for(r"^  export NATS_URL=(nats://127\.0\.0\.1:\d+)$").group(1)
        reader.wait_for("Press Ctrl-C to stop")
        with JetStreamEventSink.connect(url, "cellos.events.{tenantId}") as sink:
            for n in range(3):
                sink.emit(CloudEventV1(id=f"kept-{n}", source="/s", type="x"))
    finally:
        status, stderr = _stop(first)
    assert status == 0, stderr
    second, reader = _start_dev_server(0, *store)
    try:
        line = reader.wait_for(r"^  stream    ").string
    finally:
        status, stderr = _stop(second)
    assert status == 0, stderr
    assert line.startswith("  stream    CELLOS (found in the store): subjects cellos.events.>")
    assert line.endswith("; 3 events stored")
