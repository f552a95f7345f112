"""``cellos-jetstream spool status|replay|export`` against real spools and servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellos_sink_jetstream import CloudEventV1, JetStreamEventSink, SpoolingEventSink
from cellos_sink_jetstream._cli import main
from tests._nats import STREAM_NAME, read_stream, stage_stream
from tests.conftest import ServerFactory, StagedStream
from tests.test_spool import spawn

TEMPLATE = "cellos.events.{tenantId}"


def spool_with_events(directory: Path, count: int, *, large: bool = False) -> None:
    """Spool ``count`` events (NATS unreachable), plus a dead letter when ``large``."""
    inner = JetStreamEventSink.connect(
        "nats://127.0.0.1:1", TEMPLATE, wait=False, publish_timeout=1.0
    )
    with SpoolingEventSink(inner, directory) as sink:
        for n in range(count):
            sink.emit(
                CloudEventV1(
                    id=f"spooled-{n}", source="/cli", type="t", extensions={"tenantid": "acme"}
                )
            )
        if large:
            # Written as a dead letter directly, as replay would after a refusal.
            sink._store.dead_letter(
                "refused-1", b'{"id":"refused-1"}', spooled_at=1.0, failed_at=2.0, error="too big"
            )


def test_status_shows_depth_dead_letters_and_the_lock_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_with_events(tmp_path, 3, large=True)
    child = spawn("hold", str(tmp_path), "nats://127.0.0.1:1")
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline().split()[1])
        assert main(["spool", "status", str(tmp_path)]) == 0
    finally:
        child.kill()
        child.communicate(timeout=10)
    shown = {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    }
    assert shown["depth"] == "3"
    assert shown["dead letters"] == "1"
    assert shown["locked by"] == f"process {pid}"
    assert int(shown["bytes"].split()[0]) > 0
    assert shown["oldest"].endswith("s")


def test_status_of_a_missing_directory_fails_clearly_and_of_an_unused_one_shows_it_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["spool", "status", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["spool", "status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "depth:        0" in out
    assert "locked by:    none" in out
    assert main(["spool", "export", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []  # reading created nothing


def test_replay_of_a_missing_directory_fails_clearly_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A typo in the path must not create a fresh spool there and report it drained.
    missing = tmp_path / "typo"
    argv = ["spool", "replay", str(missing), "--subject", TEMPLATE, "--url", "nats://127.0.0.1:1"]
    assert main(argv) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_export_prints_json_lines_oldest_first_and_removes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_with_events(tmp_path, 4, large=True)
    assert main(["spool", "export", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"spooled-{n}" for n in range(4)]
    assert CloudEventV1.from_json(lines[0]).extensions["tenantid"] == "acme"
    assert main(["spool", "export", str(tmp_path), "--dead"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ["refused-1"]
    # Nothing removed: exporting again gives the same.
    assert main(["spool", "export", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_replay_drains_the_spool_to_nats_and_exits_0(
    stream: StagedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_with_events(tmp_path, 25)
    code = main(
        [
            "spool",
            "replay",
            str(tmp_path),
            "--subject",
            TEMPLATE,
            "--url",
            stream.url,
            "--timeout",
            "30",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "the spool is empty" in capsys.readouterr().err
    ids = [m.headers["Nats-Msg-Id"] for m in read_stream(stream.url, STREAM_NAME) if m.headers]
    assert ids == [f"spooled-{n}" for n in range(25)]
    assert {m.subject for m in read_stream(stream.url, STREAM_NAME)} == {"cellos.events.acme"}
    # Replaying again stores nothing twice (the spool is empty).
    assert main(["spool", "replay", str(tmp_path), "--subject", TEMPLATE, "--url", stream.url]) == 0


def test_replay_exits_1_when_events_remain_after_the_timeout(
    nats_server_factory: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory(start=False)  # never started: NATS stays down
    spool_with_events(tmp_path, 5)
    code = main(
        [
            "spool",
            "replay",
            str(tmp_path),
            "--subject",
            TEMPLATE,
            "--url",
            server.url,
            "--timeout",
            "0.5",
            "--connect-timeout",
            "0.2",
        ]
    )
    assert code == 1
    assert "5 still spooled" in capsys.readouterr().err
    assert main(["spool", "status", str(tmp_path)]) == 0
    assert "depth:        5" in capsys.readouterr().out


def test_replay_refuses_a_spool_another_process_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_with_events(tmp_path, 1)
    child = spawn("hold", str(tmp_path), "nats://127.0.0.1:1")
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline().split()[1])
        code = main(
            [
                "spool",
                "replay",
                str(tmp_path),
                "--subject",
                TEMPLATE,
                "--url",
                "nats://127.0.0.1:1",
                "--timeout",
                "1",
            ]
        )
    finally:
        child.kill()
        child.communicate(timeout=10)
    assert code == 1
    assert f"in use by process {pid}" in capsys.readouterr().err


def test_replay_to_a_stream_that_stores_it_later(
    nats_server_factory: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = nats_server_factory()
    stage_stream(server.url, STREAM_NAME, ["cellos.events.>"], duplicate_window=120)
    spool_with_events(tmp_path, 3)
    assert main(["spool", "replay", str(tmp_path), "--subject", TEMPLATE, "--url", server.url]) == 0
    assert "replayed 3 events" in capsys.readouterr().err
