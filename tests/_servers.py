"""The tests' nats-servers: the package's :class:`NatsServer` plus TLS, authentication,
limits and clustering, and :class:`NatsCluster`, a few of them routed together.

Not shipped: the package keeps only what its CLI needs (one local server with JetStream).

Readiness is judged by the monitoring endpoint ``GET /healthz``. What "ready" means is
selectable, see :data:`HealthCheck`:

``"full"``
    Plain ``/healthz``. Standalone: accepting connections and every stream found in the
    store directory recovered (a standalone server only opens its client port after
    recovering JetStream, so this is quick). Clustered: additionally a JetStream meta
    leader is known, this node is current with it, and every stream and consumer replica
    it holds is current. A lone cluster member never gets there: it needs a quorum.
``"js-meta-only"``
    Stop after the meta-layer checks: meta leader known and this node current with it.
    (Not ``js-server-only``: on nats-server 2.15 that one skips the meta layer and
    reports ok while the node has no leader.)
``"js-enabled-only"``
    Accepting connections and JetStream switched on; nothing about the cluster.

Timings seen with nats-server 2.15 on loopback: a standalone server is ready in well under
a second; a fresh three-member cluster elects its meta leader within a fraction of a
second once all members run; a member restarted after SIGKILL reports "not current with
the meta leader" for about two seconds before it is fully healthy again. The server logs
every failed health check as ``Healthcheck failed: ...``; :meth:`NatsServer.log_tail`
folds runs of those lines into one.

Secrets never leave this module in clear text: the configuration file is created with
mode ``0600``, and ``repr()``, log messages and errors only show :attr:`NatsServer.client_url`.

Also here: :func:`frozen`, which SIGSTOPs a server (a hung process) until the block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Optional

from cellos_sink_jetstream._errors import ConfigError
from cellos_sink_jetstream._server import NatsServer as _LocalServer
from cellos_sink_jetstream._server import NatsServerError, PathLike, _conf_str, free_port
from tests._polling import wait_until

__all__ = ["HealthCheck", "NatsCluster", "NatsServer", "all_threads_stopped", "frozen"]

#: What :meth:`NatsServer.wait_ready` waits for; see the module documentation.
HealthCheck = Literal["full", "js-meta-only", "js-enabled-only"]

_HEALTH_PATHS: dict[str, str] = {
    "full": "/healthz",
    "js-meta-only": "/healthz?js-meta-only=true",
    "js-enabled-only": "/healthz?js-enabled-only=true",
}

# nats-py takes credentials from a URL without percent-decoding them, so only characters
# that need no quoting may be used; "," is out because NATS_URL lists are comma-separated.
_URL_SAFE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+;=]+")


class NatsServer(_LocalServer):
    """The package's local server, plus what the tests need to configure.

    Args:
        port, host, store_dir, work_dir, max_mem, max_file, binary: as for the package's
            server; ``max_mem`` and ``max_file`` are kept small because tests run many
            servers at once.
        jetstream: enable JetStream.
        user, password: require this user and password from clients. Letters, digits and
            ``-._~!$&'()*+;=`` only, since :attr:`url` embeds them unquoted.
        token: require this token from clients (exclusive with ``user``/``password``;
            same characters).
        cert_file, key_file: serve TLS with this certificate chain and key (PEM). Clients
            are not asked for certificates.
        server_name: the server's name; required by clustered JetStream, so one is made
            up from the port when clustering without a name.
        cluster_name: join a cluster of this name; enables the route listener.
        cluster_port: route port; a free one is picked when clustering without it.
        routes: route URLs of the other members, e.g. ``nats-route://127.0.0.1:6222``.
        max_payload: the largest message the server accepts, in bytes.
        extra_config: text appended to the configuration file as is.
        debug: enable the server's debug log.
    """

    def __init__(
        self,
        *,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        store_dir: Optional[PathLike] = None,
        work_dir: Optional[PathLike] = None,
        jetstream: bool = True,
        max_mem: int = 256 * 1024**2,
        max_file: int = 2 * 1024**3,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        cert_file: Optional[PathLike] = None,
        key_file: Optional[PathLike] = None,
        server_name: Optional[str] = None,
        cluster_name: Optional[str] = None,
        cluster_port: Optional[int] = None,
        routes: Sequence[str] = (),
        max_payload: Optional[int] = None,
        extra_config: str = "",
        binary: Optional[PathLike] = None,
        debug: bool = False,
    ) -> None:
        if (user is None) != (password is None):
            raise ConfigError("user and password must be given together")
        if token is not None and user is not None:
            raise ConfigError("give either token or user/password, not both")
        for label, secret in (("user", user), ("password", password), ("token", token)):
            if secret is not None and not _URL_SAFE.fullmatch(secret):
                raise ConfigError(
                    f"{label} must be non-empty and use only letters, digits and "
                    f"-._~!$&'()*+;= so that it can be embedded in the server URL"
                )
        if (cert_file is None) != (key_file is None):
            raise ConfigError("cert_file and key_file must be given together")
        if routes and cluster_name is None:
            raise ConfigError("routes need a cluster_name")
        if max_payload is not None and max_payload <= 0:
            raise ConfigError(f"max_payload must be positive, got {max_payload}")
        super().__init__(
            port=port,
            host=host,
            store_dir=store_dir,
            work_dir=work_dir,
            max_mem=max_mem,
            max_file=max_file,
            binary=binary,
        )
        self._clustered = cluster_name is not None
        self._cluster_name = cluster_name
        self._cluster_port: Optional[int] = None
        if self._clustered:
            self._cluster_port = cluster_port if cluster_port is not None else free_port(host)
        if server_name is None and self._clustered:
            server_name = f"n{self.port}"
        self._server_name = server_name
        self._routes = list(routes)
        self._jetstream = jetstream
        self._user = user
        self._password = password
        self._token = token
        self._cert_file = Path(cert_file).resolve() if cert_file is not None else None
        self._key_file = Path(key_file).resolve() if key_file is not None else None
        self._max_payload = max_payload
        self._extra_config = extra_config
        self._debug = debug

    @property
    def tls(self) -> bool:
        """Whether the server serves TLS to clients."""
        return self._cert_file is not None

    @property
    def client_url(self) -> str:
        """URL for clients, without credentials; safe to print.

        ``tls://localhost:PORT`` when serving TLS, because test certificates name
        ``localhost``; ``nats://HOST:PORT`` otherwise.
        """
        if self.tls:
            host = "localhost" if self.host in ("127.0.0.1", "::1") else self.host
            return f"tls://{host}:{self.port}"
        return super().client_url

    @property
    def url(self) -> str:
        """URL for clients, with the credentials embedded when auth is on. Do not print it."""
        scheme, rest = self.client_url.split("://", 1)
        if self._user is not None and self._password is not None:
            userinfo = f"{self._user}:{self._password}@"
        elif self._token is not None:
            userinfo = f"{self._token}@"
        else:
            userinfo = ""
        return f"{scheme}://{userinfo}{rest}"

    @property
    def route_url(self) -> Optional[str]:
        """``nats-route://HOST:PORT`` for other cluster members, or None when not clustered."""
        if self._cluster_port is None:
            return None
        return f"nats-route://{self._url_host}:{self._cluster_port}"

    @property
    def cluster_port(self) -> Optional[int]:
        """The route port, or None when not clustered."""
        return self._cluster_port

    @property
    def server_name(self) -> Optional[str]:
        """The configured server name (always set when clustered)."""
        return self._server_name

    @property
    def clustered(self) -> bool:
        """Whether the server is configured as a cluster member."""
        return self._clustered

    def start(
        self,
        timeout: float = 15.0,
        *,
        wait: bool = True,
        ready: Optional[HealthCheck] = None,
    ) -> NatsServer:
        """Start the server and, unless ``wait`` is false, wait until it is ready.

        Args:
            timeout: seconds to wait for readiness.
            wait: wait for readiness; pass False to start cluster members side by side.
            ready: what to wait for (see :data:`HealthCheck`). Default: ``"full"`` for a
                standalone server; ``"js-enabled-only"`` for a cluster member, because a
                lone member cannot be fully healthy before a quorum of peers is up.

        Raises:
            NatsServerError: already running, exited during start-up, or not ready in
                time (the process is then killed); the message carries the log's end.
        """
        super().start(timeout, wait=False)
        if wait:
            try:
                self.wait_ready(timeout, ready=ready)
            except BaseException:
                self.kill()
                raise
        return self

    def restart(
        self,
        timeout: float = 15.0,
        *,
        wait: bool = True,
        ready: Optional[HealthCheck] = None,
    ) -> NatsServer:
        """Stop the server if it runs, then start it on the same ports and store."""
        self.stop()
        return self.start(timeout, wait=wait, ready=ready)

    def wait_ready(self, timeout: float = 15.0, *, ready: Optional[HealthCheck] = None) -> None:
        """Block until ``/healthz`` (in the ``ready`` mode) reports the server healthy."""
        check: HealthCheck = ready or ("js-enabled-only" if self._clustered else "full")
        self._wait_healthy(timeout, _HEALTH_PATHS[check])

    def healthz(self, check: HealthCheck = "full") -> dict[str, Any]:
        """Return the ``/healthz`` answer in mode ``check`` as a dict."""
        return self._healthz_at(_HEALTH_PATHS[check])

    def monitor(self, path: str, timeout: float = 5.0) -> Any:
        """GET a monitoring endpoint (e.g. ``"/varz"``, ``"/jsz?streams=true"``) as JSON.

        Raises:
            OSError: the endpoint is unreachable.
            NatsServerError: the answer is not HTTP 200.
        """
        status, body = self._http_get(path, timeout=timeout)
        if status != 200:
            raise NatsServerError(f"GET {self.monitor_url}{path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        name = f" {self._server_name}" if self._server_name else ""
        return f"<NatsServer{name} {self.client_url} {state}>"

    def _config_lines(self) -> list[str]:
        lines = super()._config_lines()
        if self._server_name is not None:
            lines.append(f"server_name: {_conf_str(self._server_name)}")
        if self._debug:
            lines.append("debug: true")
        if self._max_payload is not None:
            lines.append(f"max_payload: {int(self._max_payload)}")
        if self._user is not None and self._password is not None:
            lines += [
                "authorization {",
                f"  user: {_conf_str(self._user)}",
                f"  password: {_conf_str(self._password)}",
                "}",
            ]
        elif self._token is not None:
            lines += ["authorization {", f"  token: {_conf_str(self._token)}", "}"]
        if self._cert_file is not None and self._key_file is not None:
            lines += [
                "tls {",
                f"  cert_file: {_conf_str(str(self._cert_file))}",
                f"  key_file: {_conf_str(str(self._key_file))}",
                "  timeout: 5",
                "}",
            ]
        if self._clustered and self._cluster_name is not None:
            routes = ", ".join(_conf_str(r) for r in self._routes)
            hp = f"{self.host}:{{}}"
            lines += [
                "cluster {",
                f"  name: {_conf_str(self._cluster_name)}",
                f"  listen: {_conf_str(hp.format(self._cluster_port))}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self._extra_config:
            lines.append(self._extra_config)
        return lines

    def _jetstream_lines(self) -> list[str]:
        return super()._jetstream_lines() if self._jetstream else []


class NatsCluster:
    """A few :class:`NatsServer` members routed to each other on loopback.

    Members are named ``n1``, ``n2``, ... and each has its own ports and store. Extra
    keyword arguments go to every :class:`NatsServer` (e.g. ``max_payload``)::

        with NatsCluster(3) as cluster:
            connect_somehow(cluster.urls)
            cluster.kill("n2"); cluster.restart("n2")

    Args:
        size: number of members.
        cluster_name: the cluster's name.
        work_dir: parent of the members' work directories (``work_dir/n1`` ...);
            temporary directories when omitted.
        host: interface every member binds.
        server_options: passed on to every :class:`NatsServer`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        cluster_name: str = "cellos",
        work_dir: Optional[PathLike] = None,
        host: str = "127.0.0.1",
        **server_options: Any,
    ) -> None:
        if size < 1:
            raise ConfigError(f"a cluster needs at least one member, got {size}")
        names = [f"n{i}" for i in range(1, size + 1)]
        route_ports = {name: free_port(host) for name in names}
        url_host = f"[{host}]" if ":" in host else host
        self.servers: list[NatsServer] = [
            NatsServer(
                host=host,
                server_name=name,
                cluster_name=cluster_name,
                cluster_port=route_ports[name],
                routes=[
                    f"nats-route://{url_host}:{port}"
                    for other, port in route_ports.items()
                    if other != name
                ],
                work_dir=None if work_dir is None else Path(work_dir) / name,
                **server_options,
            )
            for name in names
        ]
        #: The cluster's name.
        self.cluster_name = cluster_name

    def server(self, name: str) -> NatsServer:
        """Return the member called ``name`` (``"n1"`` ...)."""
        for server in self.servers:
            if server.server_name == name:
                return server
        raise KeyError(name)

    @property
    def urls(self) -> list[str]:
        """Client URLs (with credentials, if any) of all members, running or not."""
        return [server.url for server in self.servers]

    @property
    def running(self) -> list[NatsServer]:
        """Members whose process is alive."""
        return [server for server in self.servers if server.is_running]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every member and wait until all are fully healthy (meta leader elected).

        Raises:
            NatsServerError: a member failed or the cluster did not form in time; every
                member is stopped first.
        """
        try:
            for server in self.servers:
                if not server.is_running:
                    server.start(wait=False)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0, *, ready: HealthCheck = "full") -> None:
        """Wait until every running member reports ``ready`` on ``/healthz``."""
        deadline = time.monotonic() + timeout
        for server in self.running:
            server.wait_ready(max(0.1, deadline - time.monotonic()), ready=ready)

    def kill(self, name: str) -> NatsServer:
        """SIGKILL member ``name`` and return it."""
        server = self.server(name)
        server.kill()
        return server

    def restart(self, name: str, timeout: float = 30.0) -> NatsServer:
        """(Re)start member ``name`` and wait until it is fully caught up with the cluster."""
        server = self.server(name)
        server.restart(timeout, ready="full")
        return server

    def stop(self) -> None:
        """Stop every member gracefully."""
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        """Stop every member and remove their temporary directories."""
        for server in self.servers:
            server.close()

    def __iter__(self) -> Iterator[NatsServer]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NatsCluster {self.cluster_name} {self.servers!r}>"


@contextlib.contextmanager
def frozen(server: _LocalServer) -> Iterator[None]:
    """SIGSTOP ``server`` (a hung process: sockets open, nothing read or answered) for the
    block, SIGCONT after.

    Entered only once every thread of the server has stopped: ``kill()`` returns before
    that, and until then the server may still read and answer what the test sends next
    (a test that counts unanswered publishes then sees some acked).
    """
    pid = server.pid
    assert pid is not None, f"{server!r} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all_threads_stopped(pid), 10, f"{server!r} did not stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state ``T`` in /proc).

    The process's own ``stat`` shows only its main thread, which may stop before the
    others (a Go server answers from any of them).
    """
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # the thread just ended
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            # The state follows the command name in parentheses, which may hold spaces.
            if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
    return True
