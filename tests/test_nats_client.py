"""The fit check of nats-py's private names, and the public-API path it falls back to."""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Optional

import nats.aio.msg
import nats.aio.subscription
import nats.aio.transport
import nats.js.client
import nats.protocol.parser
import pytest
from nats.aio.client import Client

import cellos_sink_jetstream
from cellos_sink_jetstream import CloudEventV1, ConnectError, JetStreamEventSink, _nats_client
from cellos_sink_jetstream._nats_client import (
    FORCE_PUBLIC_API_ENV,
    _shape_of_nats_py,
    nats_py_version,
    private_api_misfit,
)
from tests._nats import read_stream
from tests.conftest import StagedStream


def _fast_path(sink: JetStreamEventSink) -> bool:
    runner: Any = sink._runner
    return bool(runner.publisher.fast_path)


def test_the_installed_nats_py_has_every_private_name_the_fast_path_needs() -> None:
    # Fails as soon as a nats-py upgrade renames one: then the sink would run slower.
    # The sink runs the check on its loop thread; on Python 3.9 nats-py's Subscription
    # (an asyncio.Queue) cannot even be built without an event loop.
    async def shape_on_a_loop() -> Optional[str]:
        return _shape_of_nats_py()

    assert asyncio.run(shape_on_a_loop()) is None


def test_the_installed_nats_py_has_the_reconnect_step_the_client_quiets() -> None:
    # SinkClient overrides it to keep a nats-py race off stderr. Not part of the fit
    # check (losing it costs only that quiet, not worth the slower path without TLS), so
    # this is what notices a rename.
    method = Client._attempt_reconnect
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self"]


def test_the_installed_nats_py_has_the_server_info_the_publisher_reads() -> None:
    # Read (through _nats_client.server_info) to tell "JetStream is not enabled" from "no
    # stream captures the subject". Not part of the fit check either (a rename costs only
    # that diagnosis), so this is what notices one.
    assert isinstance(vars(Client()).get("_server_info"), dict)


async def _private_names_of_nats_py() -> set[str]:
    # The private attributes and methods of the nats-py objects the package handles. On
    # a loop: on Python 3.9 a Subscription (an asyncio.Queue) cannot be built without one.
    client = Client()
    instances = [
        client,
        nats.aio.transport.TcpTransport(),  # type: ignore[no-untyped-call]
        nats.aio.subscription.Subscription(client, id=1),
    ]
    classes = [
        Client,
        nats.aio.transport.TcpTransport,
        nats.aio.subscription.Subscription,
        nats.aio.msg.Msg,
        nats.js.client.JetStreamContext,
    ]
    names = {name for instance in instances for name in vars(instance)}
    names |= {name for cls in classes for owner in cls.__mro__ for name in vars(owner)}
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_but_nats_client_names_a_private_name_of_nats_py() -> None:
    # The README's check, made a test: every attribute read of a nats-py private name
    # (anything but self./cls., whose names are the package's own) and every string that
    # spells one (getattr(client, "_name")) sits in _nats_client.py.
    private = asyncio.run(_private_names_of_nats_py())
    package = Path(cellos_sink_jetstream.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_nats_client.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ) or (isinstance(node, ast.Constant) and node.value in private):
                found.append(f"{path.relative_to(package)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "reported"),
    [
        (Client, "_process_msg", None, "Client._process_msg"),
        (Client, "_connect_command", None, "Client._connect_command"),
        (Client, "_process_connect_init", None, "Client._process_connect_init"),
        # Same name, another shape: a coroutine where a plain method is overridden.
        (Client, "_connect_command", lambda self: None, "Client._connect_command"),
        # The parser DirectReplyParser extends: parse(data) reshaped, its state renamed.
        (nats.protocol.parser.Parser, "parse", lambda self: None, "Parser.parse"),
    ],
)
def test_a_missing_or_reshaped_private_name_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, replacement: Any, reported: str
) -> None:
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:

        async def reshaped(self: Any) -> None:
            """A coroutine where nats-py has a plain method."""

        monkeypatch.setattr(owner, name, reshaped)
    assert _shape_of_nats_py() == reported


def test_a_parser_whose_states_changed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats.protocol.parser, "AWAITING_CONTROL_LINE", "control line")
    assert _shape_of_nats_py() == "parser.AWAITING_CONTROL_LINE"


def test_a_parser_that_keeps_no_bytearray_buffer_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = nats.protocol.parser.Parser.reset

    def reset_to_bytes(self: Any) -> None:
        original(self)
        self.buf = b""

    monkeypatch.setattr(nats.protocol.parser.Parser, "reset", reset_to_bytes)
    assert _shape_of_nats_py() == "Parser.buf"


def test_a_renamed_transport_writer_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    original = nats.aio.transport.TcpTransport.__init__

    def renamed(self: Any) -> None:
        original(self)
        self._writer = self.__dict__.pop("_io_writer")

    monkeypatch.setattr(nats.aio.transport.TcpTransport, "__init__", renamed)
    assert _shape_of_nats_py() == "TcpTransport._io_writer"


def test_the_fast_path_is_the_one_taken(stream: StagedStream) -> None:
    # The suite runs once more with the fit check forced to fail (tox env publicpath).
    forced = os.environ.get(FORCE_PUBLIC_API_ENV) == "1"
    with JetStreamEventSink.connect(stream.url, stream.subject("fit"), stream=stream.name) as sink:
        assert _fast_path(sink) is not forced
        sink.emit(CloudEventV1.create("t", "/fit"))
    assert len(read_stream(stream.url, stream.name)) == 1


@pytest.fixture
def forced_misfit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_PUBLIC_API_ENV, "1")
    monkeypatch.setattr(_nats_client, "_warned", [])


@pytest.mark.usefixtures("forced_misfit")
def test_a_misfit_warns_once_and_publishes_through_the_public_api(
    stream: StagedStream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cellos_sink_jetstream")
    events = [CloudEventV1.create("t", "/public", {"n": n}) for n in range(50)]
    for _ in range(2):
        with JetStreamEventSink.connect(
            stream.url, stream.subject("public"), stream=stream.name
        ) as sink:
            assert not _fast_path(sink)
            futures = [sink.emit_nowait(event) for event in events]
            acks = [future.result(10) for future in futures]
    # Both sinks stored the same ids: the second round was deduplicated, in order.
    assert [ack.seq for ack in acks] == list(range(1, 51))
    assert all(ack.duplicate for ack in acks)
    stored = read_stream(stream.url, stream.name)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.id for e in events]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert nats_py_version() in warnings[0]
    assert FORCE_PUBLIC_API_ENV in warnings[0]


@pytest.mark.usefixtures("forced_misfit")
def test_a_misfit_refuses_tls_rather_than_risk_credentials_in_clear() -> None:
    assert private_api_misfit() is not None
    with pytest.raises(ConnectError, match="refusing to connect over TLS") as caught:
        JetStreamEventSink.connect(
            "tls://alice:s3cret@127.0.0.1:1", "cellos.events.x", connect_timeout=1.0
        )
    assert "s3cret" not in str(caught.value)
