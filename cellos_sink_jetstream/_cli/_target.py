"""Where a command connects, and short-lived nats-py sessions to that server."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from .._config import (
    ENV_NATS_URL,
    ca_file_from,
    redact_url,
    resolve_servers,
    root_ca_context,
    scrub,
    secrets_in,
    tls_required,
)
from .._errors import ConnectError
from .._nats_client import SessionFailed, close_quietly, open_session
from .._server import NatsServer
from .._sink import JetStreamEventSink, TransitionCallback
from .._version import __version__
from ._exit_status import CliError
from ._output import PROG

_JS_API_TIMEOUT = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where a command connects: server URLs (they may hold credentials), TLS, timeout."""

    servers: tuple[str, ...]
    display_url: str
    ca_file: Optional[str]
    connect_timeout: float
    #: Where ``ca_file`` came from, named in the error when it cannot be loaded.
    ca_origin: str = "--ca-file"

    @property
    def url(self) -> str:
        """The URL list for the sink. Never print it: use :attr:`display_url`."""
        return ",".join(self.servers)

    @property
    def secrets(self) -> tuple[str, ...]:
        """User names, passwords and tokens embedded in the URLs, to scrub from messages."""
        return secrets_in(self.servers)

    def tls_context(self) -> Optional[ssl.SSLContext]:
        """The TLS context trusting :attr:`ca_file`, or ``None`` without one."""
        return None if self.ca_file is None else root_ca_context(self.ca_file, self.ca_origin)


def target_from_args(args: argparse.Namespace) -> Target:
    """The target of ``--url``, ``--ca-file`` and ``--connect-timeout``, else the environment."""
    servers, _origin = resolve_servers(option(args, "url"), origin="--url")
    ca_file, ca_origin = ca_file_from(option(args, "ca_file"), os.environ, "--ca-file")
    return Target(
        servers=tuple(servers),
        display_url=redact_url(",".join(servers)),
        ca_file=ca_file,
        connect_timeout=float(option(args, "connect_timeout", 5.0)),
        ca_origin=ca_origin,
    )


def embedded_target(server: NatsServer) -> Target:
    """The target of a nats-server this process runs itself."""
    return Target((server.url,), server.client_url, None, 5.0)


def option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """The value of option ``name``, or ``default`` when it was not given."""
    # Connection options are defined on the main parser and on the subcommands with
    # SUPPRESS defaults, so they may be missing from the namespace.
    value = getattr(args, name, None)
    return default if value is None else value


async def _open_nats(target: Target) -> Client:
    """Connect with nats-py: no reconnects, errors translated to :class:`ConnectError`."""
    tls = target.tls_context()  # a CA file that cannot be loaded is named first
    try:
        return await open_session(
            target.servers,
            tls=tls,
            require_tls=tls_required(target.servers, tls),
            connect_timeout=target.connect_timeout,
            name=f"{PROG} {__version__}",
        )
    except SessionFailed as failed:
        cause = failed.last
        if failed.errors and all(isinstance(e, ConnectionRefusedError) for e in failed.errors):
            # Every attempt was refused at once: nothing waited for connect_timeout.
            problem = (
                "the connection was refused (is the server running, and listening on that port?)"
            )
        else:
            problem = (
                f"no connection within {target.connect_timeout:g}s (last error: "
                f"{describe_error(cause, target.secrets)})"
            )
        raise ConnectError(
            f"could not connect to NATS at {target.display_url}: {problem}; "
            f"check the URL (--url or {ENV_NATS_URL}), the credentials and the TLS settings"
        ) from None


def connect_sink(
    target: Target,
    template: str,
    *,
    command: str,
    stream: Optional[str],
    publish_timeout: float,
    on_transition: Optional[TransitionCallback] = None,
) -> JetStreamEventSink:
    """Connect the blocking sink to ``target`` (already resolved: no environment is read)."""
    return JetStreamEventSink.connect(
        target.url,
        template,
        tls=target.tls_context(),
        env={},
        stream=stream,
        connect_timeout=target.connect_timeout,
        publish_timeout=publish_timeout,
        on_transition=on_transition,
        name=f"{PROG} {command}",
    )


def connect_sink_in_background(
    target: Target, template: str, *, command: str, stream: Optional[str]
) -> JetStreamEventSink:
    """A sink on ``target`` that returns at once and keeps connecting (``wait=False``)."""
    return JetStreamEventSink.connect(
        target.url,
        template,
        tls=target.tls_context(),
        env={},
        stream=stream,
        connect_timeout=target.connect_timeout,
        name=f"{PROG} {command}",
        wait=False,
    )


def describe_error(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """One short line for a nats-py (or other) error, with ``secrets`` scrubbed out."""
    if isinstance(exc, nats.js.errors.APIError):
        text = f"JetStream API error {exc.code}/{exc.err_code}: {exc.description}"
    elif isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        text = "timed out"
    else:
        text = str(exc).strip() or type(exc).__name__
        if not text.startswith(type(exc).__name__) and not text.startswith("nats:"):
            text = f"{type(exc).__name__}: {text}"
    return scrub(text, secrets)[:300]


def with_nats(target: Target, action: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run ``await action(client)`` in a fresh event loop, close, return its result."""

    async def session() -> T:
        client = await _open_nats(target)
        try:
            return await action(client)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            # A nats-py error that no command turned into a message of its own.
            raise CliError(f"NATS request failed: {describe_error(exc, target.secrets)}") from None
        finally:
            await close_quietly(client)

    return asyncio.run(session())


def server_version(client: Client) -> str:
    """The connected server's version, ``major.minor.patch``."""
    version = client.connected_server_version
    try:
        return f"{version.major}.{version.minor}.{version.patch}"
    except ValueError:  # not semantic versioning
        return "(unknown version)"


def jetstream(client: Client) -> JetStreamContext:
    """A JetStream context whose API requests time out after a few seconds."""
    return client.jetstream(timeout=_JS_API_TIMEOUT)
