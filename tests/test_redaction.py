"""Secrets are redacted where they are (a URL's credential fields), never inside prose."""

from __future__ import annotations

import logging

import pytest

from cellos_sink_jetstream import ConnectError, JetStreamEventSink
from cellos_sink_jetstream._config import scrub, secrets_in
from tests.conftest import ServerFactory

SERVERS = ["nats://u:pw-7@10.0.0.1:4222", "tls://tok3n-abc@10.0.0.2:4222"]


@pytest.mark.parametrize(
    "text",
    [
        "the connection is not secure",
        "nats: 'Authorization Violation'",
        "user unknown; pw-7s are not passwords",
        "tok3n-abcdef is another token",
    ],
)
def test_prose_is_left_alone(text: str) -> None:
    assert scrub(text, secrets_in(SERVERS)) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("failed at nats://u:pw-7@10.0.0.1:4222: boom", "failed at nats://***@10.0.0.1:4222: boom"),
        ("tls://tok3n-abc@10.0.0.2:4222 refused", "tls://***@10.0.0.2:4222 refused"),
        ("dial u:pw-7@10.0.0.1 failed", "dial ***@10.0.0.1 failed"),
        ("password 'pw-7' rejected", "password '***' rejected"),
        ("token=tok3n-abc", "token=***"),
        # A URL whose credentials are not ours is redacted too.
        ("via nats://someone:else@host:1", "via nats://***@host:1"),
    ],
)
def test_credentials_are_redacted(text: str, shown: str) -> None:
    assert scrub(text, secrets_in(SERVERS)) == shown


def test_a_short_user_name_does_not_blank_the_servers_error(
    nats_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = nats_server_factory(user="u", password="pw-123")
    with pytest.raises(ConnectError) as info:
        JetStreamEventSink.connect(
            f"nats://u:wrong-pw-9@127.0.0.1:{server.port}",
            "cellos.events.x",
            connect_timeout=1.0,
            env={},
        )
    message = str(info.value)
    assert "authorization violation" in message.lower()
    assert "***@127.0.0.1" in message
    assert "wrong-pw-9" not in message
    assert "wrong-pw-9" not in caplog.text
    assert "uthorization" in caplog.text  # the records keep the server's words too
