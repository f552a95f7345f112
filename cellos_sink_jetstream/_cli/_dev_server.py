"""``dev-server``: a local nats-server with JetStream and the development stream."""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path
from typing import Optional

from nats.aio.client import Client
from nats.js import api

from .._config import ENV_NATS_URL
from .._server import NatsServer
from ._exit_status import EXIT_OK, CliError
from ._output import out
from ._signals import stop_requested_on_signals
from ._streams import describe_stream, dev_stream_config, ensure_stream
from ._target import Target, embedded_target, jetstream, server_version, with_nats


def _ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if os.name == "posix":
            # As nats-server binds (Go sets SO_REUSEADDR): connections of a server that
            # just stopped linger in TIME-WAIT for a minute and must not count as "in use";
            # a socket still listening on the port does. (On Windows the option would let
            # the probe share a port that is really taken.)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise CliError(
                f"port {port} on {host} is in use (another nats-server?); pass --port 0 "
                f"to pick a free one"
            ) from None


def _stage_dev_stream(target: Target) -> tuple[str, api.StreamInfo, bool]:
    async def stage(client: Client) -> tuple[str, api.StreamInfo, bool]:
        info, created = await ensure_stream(jetstream(client), dev_stream_config())
        return server_version(client), info, created

    return with_nats(target, stage)


def cmd_dev_server(args: argparse.Namespace) -> int:
    host = "127.0.0.1"
    port: int = args.port
    if port:
        _ensure_port_free(host, port)
    store = None if args.store is None else Path(args.store).expanduser()
    server = NatsServer(host=host, port=port or None, store_dir=store)
    with stop_requested_on_signals() as stop_requested:
        try:
            server.start()
            version, info, created = _stage_dev_stream(embedded_target(server))
            _print_dev_server_banner(server, version, info, created, store)
            _wait_for_stop(server, stop_requested)
        finally:
            server.close()
    out("nats-server stopped")
    return EXIT_OK


def _print_dev_server_banner(
    server: NatsServer, version: str, info: api.StreamInfo, created: bool, store: Optional[Path]
) -> None:
    kept = "kept" if store is not None else "temporary, deleted on exit; --store DIR keeps it"
    # describe_stream ends with the count of stored events; say only where it came from.
    state = "staged" if created else "found in the store"
    out(f"nats-server {version} with JetStream is running on {server.client_url}")
    out(f"  store     {server.store_dir} ({kept})")
    out(f"  stream    {info.config.name} ({state}): {describe_stream(info)}")
    out(f"  monitor   {server.monitor_url}")
    out("Point the sink and this tool at it:")
    out(f"  export {ENV_NATS_URL}={server.client_url}")
    out("Press Ctrl-C to stop.")


def _wait_for_stop(server: NatsServer, stop_requested: threading.Event) -> None:
    while not stop_requested.wait(0.25):
        if not server.is_running:
            if stop_requested.wait(0.5):  # Ctrl-C reaches nats-server too, and may win
                return
            raise CliError(
                f"nats-server exited unexpectedly with status {server.returncode}; the end "
                f"of its log:\n{server.log_tail(20)}"
            )
