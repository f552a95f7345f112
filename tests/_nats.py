"""Synchronous helpers that drive nats-py from plain (non-asyncio) test code.

Every helper opens its own connection inside ``asyncio.run`` and closes it before
returning, so no loop or socket outlives the call (the suite runs with
``filterwarnings = error``). ``servers`` is one URL or a list of URLs (credentials may be
embedded); ``tls`` is a client :class:`ssl.SSLContext` for ``tls://`` servers;
``connect_options`` holds further :func:`nats.connect` keyword arguments.

Also here: :func:`make_tls_files`, which writes a throw-away PKI with ``trustme``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, TypeVar, Union

import nats.errors
import nats.js.errors
import trustme
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from tests._polling import wait_until
from tests._servers import NatsCluster, NatsServer

__all__ = [
    "DUPLICATE_WINDOW",
    "STREAM_NAME",
    "SUBJECT_PREFIX",
    "ServerFactory",
    "Servers",
    "StagedStream",
    "TLSFiles",
    "connect",
    "delete_stream",
    "make_tls_files",
    "publish",
    "read_stream",
    "run",
    "stage_stream",
    "stream_info",
    "stream_leader",
]

#: Name of the stream the ``stream`` fixture stages.
STREAM_NAME = "CELLOS"
#: Subjects of that stream are ``cellos.events.>``.
SUBJECT_PREFIX = "cellos.events"
#: Its duplicate window, in seconds.
DUPLICATE_WINDOW = 120.0

#: One server URL or several (a cluster).
Servers = Union[str, Sequence[str]]

T = TypeVar("T")

# Errors a JetStream API call may give while a cluster elects a leader or a server warms
# up; helpers that stage state retry on them instead of failing the test.
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


async def _quiet_error_cb(exc: Exception) -> None:
    # nats-py logs every connection error at ERROR level by default; the helpers raise
    # what matters, and expected failures (wrong CA, bad password) need not be logged.
    pass


async def connect(
    servers: Servers,
    *,
    tls: Optional[ssl.SSLContext] = None,
    **options: Any,
) -> Client:
    """Connect with test-friendly defaults: no reconnect, short timeouts, quiet errors.

    For use inside the caller's own ``asyncio.run``; close the client when done.
    """
    settings: dict[str, Any] = {
        "allow_reconnect": False,
        "connect_timeout": 2,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "error_cb": _quiet_error_cb,
    }
    if tls is not None:
        settings["tls"] = tls
    settings.update(options)
    url_list = [servers] if isinstance(servers, str) else list(servers)
    nc = Client()
    try:
        await nc.connect(url_list, **settings)
    except BaseException:
        # nats-py leaves the socket of a refused connection (e.g. bad password) open, which
        # surfaces later as an "unclosed transport" ResourceWarning. Client.close() is no
        # cure: after a failed TLS handshake it waits forever for the dead plain socket.
        # Nothing else (reader, flusher, pings) has started yet, so closing the socket is
        # all the cleanup there is.
        transport = nc._transport
        if transport is not None:
            # nats-py before 2.10 fails here when the socket never opened.
            with contextlib.suppress(AttributeError):
                transport.close()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0)
        raise
    return nc


def run(
    servers: Servers,
    action: Callable[[Client], Awaitable[T]],
    *,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
) -> T:
    """Connect, run ``await action(client)``, close, and return its result."""

    async def main() -> T:
        nc = await connect(servers, tls=tls, **dict(connect_options or {}))
        try:
            return await action(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


def stage_stream(
    servers: Servers,
    name: str,
    subjects: Sequence[str],
    *,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
    timeout: float = 15.0,
    **config: Any,
) -> api.StreamInfo:
    """Create (or update to the same config) JetStream stream ``name`` over ``subjects``.

    ``config`` holds further :class:`nats.js.api.StreamConfig` fields, e.g.
    ``duplicate_window=120`` (seconds), ``storage="memory"``, ``num_replicas=3``,
    ``max_msg_size=...``. Retries for up to ``timeout`` seconds while the server or
    cluster is not ready to create streams yet.
    """
    if isinstance(config.get("storage"), str):
        config["storage"] = api.StorageType(config["storage"])
    stream_config = api.StreamConfig(name=name, subjects=list(subjects), **config)

    async def create(nc: Client) -> api.StreamInfo:
        js = nc.jetstream(timeout=5.0)
        return await _retry(lambda: js.add_stream(stream_config), timeout)

    return run(servers, create, tls=tls, connect_options=connect_options)


def stream_info(
    servers: Servers,
    name: str,
    *,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
) -> api.StreamInfo:
    """Return the current :class:`~nats.js.api.StreamInfo` of stream ``name``."""

    async def info(nc: Client) -> api.StreamInfo:
        return await nc.jetstream(timeout=5.0).stream_info(name)

    return run(servers, info, tls=tls, connect_options=connect_options)


def delete_stream(
    servers: Servers,
    name: str,
    *,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
) -> bool:
    """Delete stream ``name``; return whether the server confirmed it."""

    async def delete(nc: Client) -> bool:
        return bool(await nc.jetstream(timeout=5.0).delete_stream(name))

    return run(servers, delete, tls=tls, connect_options=connect_options)


def publish(
    servers: Servers,
    subject: str,
    payload: bytes,
    *,
    headers: Optional[dict[str, str]] = None,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
    timeout: float = 5.0,
    retry_for: float = 0.0,
) -> api.PubAck:
    """Publish one message with JetStream and return the server's ack.

    With ``retry_for`` > 0, a publish that finds no stream leader (no responders, no
    ack within ``timeout``, 503) is repeated for up to that many seconds, e.g. while a
    cluster elects a new leader.
    """

    async def send(nc: Client) -> api.PubAck:
        js = nc.jetstream(timeout=timeout)
        return await _retry(lambda: js.publish(subject, payload, headers=headers), retry_for)

    return run(servers, send, tls=tls, connect_options=connect_options)


def read_stream(
    servers: Servers,
    stream: str,
    *,
    subject: Optional[str] = None,
    batch: int = 1000,
    timeout: float = 10.0,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
    retry_for: float = 0.0,
) -> list[Msg]:
    """Return every message stored in ``stream`` (optionally only ``subject``), oldest first.

    Uses an ephemeral, unacknowledged, in-memory pull consumer and fetches ``batch``
    messages per round trip, so 50,000 messages take a couple of seconds. Messages
    published while reading may or may not be included. Each result is a nats-py
    :class:`~nats.aio.msg.Msg`: ``.data``, ``.headers``, ``.subject`` and
    ``.metadata.sequence.stream``.

    With ``retry_for`` > 0, a read that meets no responders, a 503 or a timeout is done
    again from the start for up to that many seconds: in a cluster whose member was just
    restarted, the consumer may be placed where it is not served yet.
    """

    async def read_again_while_unavailable(nc: Client) -> list[Msg]:
        return await _retry(lambda: read(nc), retry_for)

    async def read(nc: Client) -> list[Msg]:
        js = nc.jetstream(timeout=timeout)
        name = f"read_{uuid.uuid4().hex}"
        consumer = api.ConsumerConfig(
            name=name,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
        )
        info = await js.add_consumer(stream, consumer)
        remaining = info.num_pending or 0
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        messages: list[Msg] = []
        try:
            while remaining > 0:
                got = await sub.fetch(min(batch, remaining), timeout=timeout)
                messages.extend(got)
                # The last message's metadata says how many are still behind it.
                remaining = got[-1].metadata.num_pending
        finally:
            await sub.unsubscribe()
            # Should the delete fail, the consumer expires by itself (inactive_threshold).
            with contextlib.suppress(nats.errors.Error):
                await js.delete_consumer(stream, name)
        return messages

    return run(servers, read_again_while_unavailable, tls=tls, connect_options=connect_options)


def stream_leader(
    servers: Servers,
    name: str,
    *,
    timeout: float = 15.0,
    tls: Optional[ssl.SSLContext] = None,
    connect_options: Optional[Mapping[str, Any]] = None,
) -> str:
    """Return the server name of the current leader of clustered stream ``name``.

    Waits up to ``timeout`` seconds while no leader is elected (e.g. right after the
    previous leader was killed).
    """
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            info = stream_info(servers, name, tls=tls, connect_options=connect_options)
        except (*_TRANSIENT, OSError) as exc:
            last_error = exc
        else:
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        time.sleep(0.1)
    raise AssertionError(f"stream {name} has no leader after {timeout}s (last: {last_error!r})")


async def _retry(call: Callable[[], Awaitable[T]], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except _TRANSIENT:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away PKI, see :func:`make_tls_files`."""

    #: The good CA's certificate: clients trust this one.
    ca_file: Path
    #: Server certificate for ``localhost`` and ``127.0.0.1``, signed by the good CA.
    server_cert: Path
    #: Its private key.
    server_key: Path
    #: An unrelated CA's certificate: trusting only this must fail the handshake.
    wrong_ca_file: Path
    #: Server certificate for ``not-localhost.example``, signed by the good CA: the
    #: chain verifies but the host name does not match.
    other_host_cert: Path
    #: Its private key.
    other_host_key: Path

    def client_context(self, *, wrong_ca: bool = False) -> ssl.SSLContext:
        """Return a verifying client context trusting the good (or the wrong) CA only."""
        return ssl.create_default_context(
            cafile=str(self.wrong_ca_file if wrong_ca else self.ca_file)
        )


def make_tls_files(directory: Path) -> TLSFiles:
    """Write a CA, server certificates and an unrelated CA into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    wrong_ca = trustme.CA()
    files = TLSFiles(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        wrong_ca_file=directory / "wrong-ca.pem",
        other_host_cert=directory / "other-host.pem",
        other_host_key=directory / "other-host.key",
    )
    ca.cert_pem.write_to_path(files.ca_file)
    wrong_ca.cert_pem.write_to_path(files.wrong_ca_file)
    for identities, cert_path, key_path in (
        (("localhost", "127.0.0.1"), files.server_cert, files.server_key),
        (("not-localhost.example",), files.other_host_cert, files.other_host_key),
    ):
        leaf = ca.issue_cert(*identities)
        leaf.private_key_pem.write_to_path(key_path)
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return files


@dataclass(frozen=True)
class StagedStream:
    """A running server with the ``CELLOS`` stream staged on it."""

    #: Client URL of the server.
    url: str
    #: Stream name, ``CELLOS``.
    name: str
    #: Subject prefix captured by the stream, ``cellos.events`` (the stream holds ``.>``).
    subject_prefix: str
    #: The server, e.g. to kill or restart it.
    server: NatsServer

    def subject(self, *tokens: str) -> str:
        """Return a subject under the prefix, e.g. ``subject("t1", "x")``."""
        return ".".join((self.subject_prefix, *tokens))


class ServerFactory(Protocol):
    """Type of the ``nats_server_factory`` fixture."""

    def __call__(self, *, start: bool = True, **options: Any) -> NatsServer:
        """Create (and by default start) a :class:`NatsServer` with these options."""


def replica_messages(cluster: NatsCluster, stream: str) -> dict[Optional[str], int]:
    """How many messages each running member's replica of ``stream`` holds (``/jsz``)."""
    counts: dict[Optional[str], int] = {}
    for server in cluster.running:
        jsz = server.monitor("/jsz?streams=true")
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail["name"] == stream:
                    counts[server.server_name] = detail["state"]["messages"]
    return counts


def wait_for_replicas_in_step(cluster: NatsCluster, stream: str, timeout: float = 30) -> None:
    """Wait until every running member's replica holds what the stream leader reports.

    A member that was just restarted reports healthy before its replica caught up, and a
    read served from it would come back short (or time out).
    """
    urls = [s.url for s in cluster.running]

    def in_step() -> bool:
        try:
            total = stream_info(urls, stream).state.messages
            counts = replica_messages(cluster, stream)
        except (nats.errors.Error, OSError):  # a member still settling in
            return False
        return len(counts) == len(cluster.running) and set(counts.values()) == {total}

    wait_until(in_step, timeout, f"the replicas of {stream} never caught up with its leader")
