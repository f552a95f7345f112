"""build_primary_event_sink and the environment variables, against real servers."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from cellos_sink_jetstream import (
    CloudEventV1,
    ConfigError,
    ConnectError,
    JetStreamEventSink,
    NoopEventSink,
    SinkStats,
    build_primary_event_sink,
    redact_url,
)
from cellos_sink_jetstream._config import env_flag, resolve_servers
from tests._nats import TLSFiles, stage_stream
from tests.conftest import ServerFactory, StagedStream


def unreachable_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("value", ["1", "true", "YES", " on ", "True"])
def test_truthy_values(value: str) -> None:
    assert env_flag({"X": value}, "X") is True


@pytest.mark.parametrize("value", [None, "", "0", "false", "No", "OFF"])
def test_falsy_values(value: str | None) -> None:
    env = {} if value is None else {"X": value}
    assert env_flag(env, "X") is False


def test_other_values_are_config_errors_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CELL_OS_REQUIRE_JETSTREAM"):
        build_primary_event_sink("a.b", env={"CELL_OS_REQUIRE_JETSTREAM": "maybe"})
    with pytest.raises(ConfigError, match="CELL_OS_USE_NOOP_SINK"):
        build_primary_event_sink("a.b", env={"CELL_OS_USE_NOOP_SINK": "2"})


def test_use_noop_skips_connecting_even_when_jetstream_is_required() -> None:
    # Connecting to the unreachable URL with JetStream required would raise ConnectError.
    sink = build_primary_event_sink(
        "a.b",
        env={
            "CELL_OS_USE_NOOP_SINK": "1",
            "CELL_OS_REQUIRE_JETSTREAM": "1",
            "NATS_URL": unreachable_url(),
        },
    )
    assert isinstance(sink, NoopEventSink)


def test_reachable_nats_url_gives_the_jetstream_sink(stream: StagedStream) -> None:
    sink = build_primary_event_sink(stream.subject("compose"), env={"NATS_URL": stream.url})
    try:
        assert isinstance(sink, JetStreamEventSink)
    finally:
        sink.close()


def test_unreachable_degrades_to_noop_with_a_warning_in_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cellos_sink_jetstream")
    started = time.monotonic()
    sink = build_primary_event_sink("a.b", env={"NATS_URL": unreachable_url()}, connect_timeout=1.0)
    assert isinstance(sink, NoopEventSink)
    assert time.monotonic() - started < 1.0 + 1.5
    assert "no-op sink" in caplog.text


def test_unreachable_with_require_raises_connect_error_in_bounded_time() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectError, match="CELL_OS_REQUIRE_JETSTREAM"):
        build_primary_event_sink(
            "a.b",
            env={"NATS_URL": unreachable_url(), "CELL_OS_REQUIRE_JETSTREAM": "yes"},
            connect_timeout=1.0,
        )
    assert time.monotonic() - started < 1.0 + 1.5


def test_default_connect_timeout_is_five_seconds() -> None:
    # A refused port fails at once; a peer that accepts and never speaks takes the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        sink = build_primary_event_sink("a.b", env={"NATS_URL": url})
        elapsed = time.monotonic() - started
    assert isinstance(sink, NoopEventSink)
    # Wide of 5 s both ways, as a loaded machine only ever adds time: a default of 2 s
    # would end before 4 s, a doubled or retried wait of 5 s would take 10 s.
    assert 4.0 < elapsed < 9.0


@pytest.mark.fast_path  # see tox env publicpath
def test_nats_ca_file_turns_on_tls(nats_server_factory: ServerFactory, tls_files: TLSFiles) -> None:
    server = nats_server_factory(cert_file=tls_files.server_cert, key_file=tls_files.server_key)
    stage_stream(server.url, "CELLOS", ["cellos.events.>"], tls=tls_files.client_context())
    env = {
        "NATS_URL": server.url,
        "NATS_CA_FILE": str(tls_files.ca_file),
        "CELL_OS_REQUIRE_JETSTREAM": "1",
    }
    sink = build_primary_event_sink("cellos.events.ca", env=env)
    try:
        assert isinstance(sink, JetStreamEventSink)
        sink.emit({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
    finally:
        sink.close()
    with pytest.raises(ConnectError):
        build_primary_event_sink(
            "cellos.events.ca",
            env={**env, "NATS_CA_FILE": str(tls_files.wrong_ca_file)},
            connect_timeout=1.0,
        )


def test_unreadable_ca_file_is_a_config_error_naming_the_variable(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="NATS_CA_FILE"):
        build_primary_event_sink(
            "a.b", env={"NATS_URL": unreachable_url(), "NATS_CA_FILE": "/nonexistent/ca.pem"}
        )


def test_explicit_url_wins_over_nats_url(stream: StagedStream) -> None:
    with JetStreamEventSink.connect(
        stream.url, stream.subject("x"), env={"NATS_URL": unreachable_url()}
    ) as sink:
        sink.emit({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})


def test_server_url_resolution_and_validation() -> None:
    assert resolve_servers(None, {})[0] == ["nats://127.0.0.1:4222"]
    assert resolve_servers(None, {"NATS_URL": "nats://a:1, nats://b:2"})[0] == [
        "nats://a:1",
        "nats://b:2",
    ]
    with pytest.raises(ConfigError, match="NATS_URL") as info:
        resolve_servers(None, {"NATS_URL": "http://user:hunter2@host:1"})
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError):
        resolve_servers("nats://host:notaport", {})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:pass@host:4222", "nats://***@host:4222"),
        ("tls://tok3n@host", "tls://***@host"),
        ("nats://a:1,nats://u:p@b:2", "nats://a:1,nats://***@b:2"),
        ("nats://[::1]:4222", "nats://[::1]:4222"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("connect_timeout", "soon"),
        ("publish_timeout", -1),
        ("reconnect_time_wait", 0),
        ("max_in_flight", 1.5),
        ("stream", ""),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        JetStreamEventSink.connect(unreachable_url(), "a.b", **{option: value})


# -- the no-op fallback says why, and is seen ---------------------------------------------

_BUILD_AND_REPORT = """
import sys
from cellos_sink_jetstream import build_primary_event_sink
if sys.argv[1] == "logging":
    import logging
    logging.basicConfig(format="LOGGED %(levelname)s %(name)s: %(message)s")
sink = build_primary_event_sink("a.b", connect_timeout=1.0)
sink.emit({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
sink.emit({"specversion": "1.0", "id": "2", "source": "/s", "type": "t"})
print(type(sink).__name__, sink.stats().dropped)
print(sink.reason)
"""


def _build_in_child(env: dict[str, str], mode: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "CELL_OS_"))}
    return subprocess.run(
        [sys.executable, "-c", _BUILD_AND_REPORT, mode],
        env={**child_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_noop_sink_counts_every_emit_as_dropped_and_says_why() -> None:
    sink = NoopEventSink(reason="testing")
    event = CloudEventV1.create("t", "/s")
    for _ in range(3):
        sink.emit(event)
    assert sink.stats() == SinkStats(
        published=0,
        duplicates=0,
        failed=0,
        fast_failed=0,
        probes=0,
        breaker_openings=0,
        in_flight=0,
        queue_depth=0,
        dropped=3,
    )
    assert sink.reason == "testing"
    assert "testing" in repr(sink)
    assert NoopEventSink().stats().dropped == 0


def test_noop_sink_counts_emits_from_many_threads() -> None:
    sink = NoopEventSink()
    event = CloudEventV1.create("t", "/s")

    def emit_many() -> None:
        for _ in range(1000):
            sink.emit(event)

    threads = [threading.Thread(target=emit_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sink.stats().dropped == 8000


def test_degrading_without_logging_prints_one_stderr_line() -> None:
    url = unreachable_url().replace("nats://", "nats://svc:hunter2@")
    result = _build_in_child({"NATS_URL": url}, "plain")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "events will be dropped" in lines[0]
    assert "could not connect" in lines[0]
    assert "CELL_OS_REQUIRE_JETSTREAM=1" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    summary, reason = result.stdout.splitlines()
    assert summary == "NoopEventSink 2"
    assert "could not connect" in reason
    assert "***@127.0.0.1" in reason


@pytest.mark.fast_path  # see tox env publicpath
def test_degrading_with_logging_configured_logs_one_warning_and_prints_nothing_else() -> None:
    result = _build_in_child({"NATS_URL": unreachable_url()}, "logging")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("LOGGED WARNING cellos_sink_jetstream: events will be dropped")
    assert "CELL_OS_REQUIRE_JETSTREAM=1" in lines[0]


def test_degrading_logs_one_warning_record_to_a_configured_handler(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="cellos_sink_jetstream")
    sink = build_primary_event_sink("a.b", env={"NATS_URL": unreachable_url()}, connect_timeout=1.0)
    assert isinstance(sink, NoopEventSink)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "events will be dropped" in warnings[0].getMessage()
    assert "CELL_OS_REQUIRE_JETSTREAM" in warnings[0].getMessage()
    assert capsys.readouterr().err == ""
    assert sink.reason.startswith("JetStream unreachable at startup: could not connect")


def test_noop_opt_in_with_require_names_both_variables_on_stderr() -> None:
    result = _build_in_child(
        {
            "NATS_URL": unreachable_url(),
            "CELL_OS_USE_NOOP_SINK": "1",
            "CELL_OS_REQUIRE_JETSTREAM": "1",
        },
        "plain",
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "events will be dropped" in lines[0]
    assert "CELL_OS_USE_NOOP_SINK" in lines[0]
    assert "CELL_OS_REQUIRE_JETSTREAM" in lines[0]
    summary, reason = result.stdout.splitlines()
    assert summary == "NoopEventSink 2"
    assert "CELL_OS_USE_NOOP_SINK" in reason


def test_noop_opt_in_with_require_names_both_variables_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cellos_sink_jetstream")
    sink = build_primary_event_sink(
        "a.b", env={"CELL_OS_USE_NOOP_SINK": "yes", "CELL_OS_REQUIRE_JETSTREAM": "on"}
    )
    assert isinstance(sink, NoopEventSink)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "CELL_OS_USE_NOOP_SINK" in warnings[0].getMessage()
    assert "CELL_OS_REQUIRE_JETSTREAM" in warnings[0].getMessage()


def test_noop_opt_in_alone_is_not_announced_as_a_degradation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cellos_sink_jetstream")
    sink = build_primary_event_sink("a.b", env={"CELL_OS_USE_NOOP_SINK": "1"})
    assert isinstance(sink, NoopEventSink)
    assert sink.reason == "CELL_OS_USE_NOOP_SINK is set"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_connect_error_from_a_real_server_is_the_reason_redacted(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cellos_sink_jetstream")
    server = nats_server_factory(user="svc", password="s3cr3t-pass-word")
    wrong = server.url.replace("s3cr3t-pass-word", "wr0ng-pass-word")
    sink = build_primary_event_sink("a.b", env={"NATS_URL": wrong}, connect_timeout=2.0)
    assert isinstance(sink, NoopEventSink)
    assert "could not connect" in sink.reason
    for text in (sink.reason, caplog.text):
        assert "s3cr3t-pass-word" not in text
        assert "wr0ng-pass-word" not in text


# -- server URLs: what nats-py accepts, and what is wrong with which part -------------------


@pytest.mark.parametrize(
    ("given", "servers"),
    [
        ("localhost:14222", ["nats://localhost:14222"]),
        ("u:p@localhost:14222", ["nats://u:p@localhost:14222"]),
        ("demo.example", ["nats://demo.example:4222"]),
        ("nats://demo.example", ["nats://demo.example:4222"]),
        ("tls://tok3n@demo.example", ["tls://tok3n@demo.example:4222"]),
        ("a:1, nats://b:2", ["nats://a:1", "nats://b:2"]),
        ("nats://[::1]:4222", ["nats://[::1]:4222"]),
    ],
)
def test_server_urls_are_read_as_nats_py_reads_them(given: str, servers: list[str]) -> None:
    assert resolve_servers(None, {"NATS_URL": given})[0] == servers


@pytest.mark.parametrize(
    ("given", "part"),
    [
        ("nats://u:hunter2@host:notaport", "the port of nats://***@host is not a number"),
        ("nats://host:notaport", "the port of nats://host is not a number from 1 to 65535"),
        ("nats://host:0", "the port of nats://host is not a number from 1 to 65535"),
        ("nats://host:99999", "the port of nats://host is not a number from 1 to 65535"),
        ("http://u:hunter2@host:1", "the scheme 'http' of http://***@host:1 is not supported"),
        ("ws://host:80", "websocket URLs (ws://, wss://) are not supported"),
        ("nats://u:hunter2@:4222", "nats://***@:4222 has no host"),
        ("nats://[::1:4222", "has an unbalanced '[' or ']' in its host"),
    ],
)
def test_a_bad_server_url_names_the_part_that_is_wrong(given: str, part: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_servers(None, {"NATS_URL": given})
    message = str(info.value)
    assert message.startswith("NATS_URL: "), message
    assert part in message
    assert "hunter2" not in message
    assert "expected nats://host:port" in message
    with pytest.raises(ConfigError, match=r"^--url: "):
        resolve_servers(given, {}, origin="--url")


def test_the_bad_port_text_is_shown_only_when_no_credential_could_be_in_it() -> None:
    with pytest.raises(ConfigError, match="'notaport'"):
        resolve_servers("nats://host:notaport", {})
    with pytest.raises(ConfigError) as info:
        resolve_servers("nats://svc:pa/ss@host:4222", {})  # an unescaped '/' in a password
    message = str(info.value)
    assert "percent-encode" in message
    for fragment in ("svc", ":pa", "ss@", "'pa'"):
        assert fragment not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://u:p@host:notaport", "nats://***@host:<invalid port>"),
        ("localhost:14222", "nats://localhost:14222"),
        ("u:p@localhost:14222", "nats://***@localhost:14222"),
        ("nats://user:pw@[::1", "nats://***@[::1"),
        ("nats://::1]", "nats://::1]"),
        ("tls://tok@h@[::1", "tls://***@[::1"),
    ],
)
def test_redact_url_of_urls_that_do_not_parse_fully(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unbalanced_bracket_is_shown_redacted_not_as_a_placeholder() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_servers("nats://user:secretpw@[::1", {}, origin="--url")
    message = str(info.value)
    assert "nats://***@[::1 has an unbalanced '[' or ']' in its host" in message
    assert "unparsable" not in message
    assert "secretpw" not in message


def test_an_upper_case_scheme_is_read_as_its_lower_case(stream: StagedStream) -> None:
    # Schemes are case-insensitive (RFC 3986); nats-py only knows "nats://" and "tls://"
    # and took "NATS://h:p" for a host named "NATS", failing with a resolver error.
    upper = "NATS://" + stream.url.removeprefix("nats://")
    assert resolve_servers(upper, {})[0] == [stream.url]
    assert resolve_servers("TLS://h:1,Nats://u:p@h", {})[0] == ["tls://h:1", "nats://u:p@h:4222"]
    sink = build_primary_event_sink(
        stream.subject("upper"), env={"NATS_URL": upper, "CELL_OS_REQUIRE_JETSTREAM": "1"}
    )
    try:
        sink.emit({"specversion": "1.0", "id": "upper-1", "source": "/s", "type": "t"})
    finally:
        sink.close()


def test_a_bare_host_and_port_in_nats_url_connects(stream: StagedStream) -> None:
    bare = stream.url.removeprefix("nats://")
    sink = build_primary_event_sink(
        stream.subject("bare"), env={"NATS_URL": bare, "CELL_OS_REQUIRE_JETSTREAM": "1"}
    )
    try:
        assert isinstance(sink, JetStreamEventSink)
        sink.emit({"specversion": "1.0", "id": "bare-1", "source": "/s", "type": "t"})
    finally:
        sink.close()
