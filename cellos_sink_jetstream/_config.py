"""Environment variables, their parsing, URLs made safe to show, and option checks.

Precedence everywhere: an explicit argument wins, then the environment variable, then the
default. A bad value fails at construction with the variable's name in the message, never
its secret.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError

__all__ = [
    "DEFAULT_NATS_URL",
    "ENV_CA_FILE",
    "ENV_NATS_URL",
    "ENV_REQUIRE_JETSTREAM",
    "ENV_SPOOL_DIR",
    "ENV_SPOOL_MAX_BYTES",
    "ENV_USE_NOOP_SINK",
    "STREAM_NAME_RE",
    "check_positive",
    "env_flag",
    "env_positive_int",
    "redact_url",
    "resolve_servers",
    "scrub",
    "secrets_in",
]

#: NATS server URL(s), comma-separated; credentials may be embedded (``user:pass@``, ``token@``).
ENV_NATS_URL = "NATS_URL"
#: PEM bundle of the private root CA(s) that signs the NATS server's certificate.
ENV_CA_FILE = "NATS_CA_FILE"
#: Truthy: startup fails when JetStream cannot be reached, instead of degrading to a no-op sink.
ENV_REQUIRE_JETSTREAM = "CELL_OS_REQUIRE_JETSTREAM"
#: Truthy: use the no-op sink and never connect.
ENV_USE_NOOP_SINK = "CELL_OS_USE_NOOP_SINK"
#: A directory: wrap the JetStream sink in a durable local spool there (nothing is lost
#: while NATS is down, at startup included).
ENV_SPOOL_DIR = "CELL_OS_SPOOL_DIR"
#: Most bytes the spool may use on disk (a positive integer; default 1 GiB).
ENV_SPOOL_MAX_BYTES = "CELL_OS_SPOOL_MAX_BYTES"

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_SCHEMES = frozenset({"nats", "tls"})


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """Read a boolean environment variable.

    Truthy: ``1/true/yes/on``; falsy: unset, empty, ``0/false/no/off`` (any case, spaces
    trimmed). Anything else raises :class:`ConfigError` naming the variable.
    """
    raw = env.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{name}={raw[:40]!r} is not a boolean; use one of 1/true/yes/on or 0/false/no/off"
    )


def env_positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Read a positive integer environment variable; unset or empty gives ``default``.

    Anything else than a positive integer raises :class:`ConfigError` naming the variable.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw[:40]!r} is not a positive integer (a number of bytes)")
    return value


def redact_url(url: str) -> str:
    """Return ``url`` with any user, password or token replaced by ``***``.

    Works on comma-separated server lists too, and never raises. A bare ``host:port`` is
    shown as ``nats://host:port`` (as nats-py reads it), a port that is not a number as
    ``<invalid port>``, one with an unbalanced bracket with everything before its last ``@``
    as ``***``, and anything else that does not parse as ``<unparsable url>`` rather than
    risk echoing a secret.
    """
    return ",".join(_redact_one(part.strip()) for part in url.split(","))


def _with_scheme(url: str) -> str:
    # nats-py reads a URL without a scheme as nats://; urlsplit would take "host:" for one.
    return url if "://" in url else f"nats://{url}"


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(_with_scheme(url))
        host = parts.hostname or ""
    except ValueError:
        # An unbalanced bracket: whatever precedes the last "@" may be a credential.
        scheme, _sep, rest = _with_scheme(url).partition("://")
        if "@" in rest:
            rest = "***@" + rest.rpartition("@")[2]
        if len(scheme) > 20 or len(rest) > 100 or any(c.isspace() for c in rest):
            return "<unparsable url>"
        return f"{scheme}://{rest}"
    if "@" in url and "@" not in parts.netloc:
        return "<unparsable url>"  # an unescaped '/', '?' or '#' in the credentials
    try:
        port: Optional[str] = None if parts.port is None else str(parts.port)
    except ValueError:
        port = "<invalid port>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"***@{netloc}"
    return f"{parts.scheme}://{netloc}"


def resolve_servers(
    url: Optional[str], env: Mapping[str, str] = os.environ, *, origin: str = "url argument"
) -> tuple[Sequence[str], str]:
    """Pick the server URL list: ``url``, else ``$NATS_URL``, else the default.

    Reads each URL as nats-py does: a bare ``host:port`` (or ``host``) means
    ``nats://host:port``, and a missing port is 4222. Returns the normalised list for
    nats-py and the name of where it came from (``origin`` for ``url``, else the variable),
    for error messages. Raises :class:`ConfigError` naming that origin and the part of the
    URL that is wrong (shown redacted) for an empty list, an unsupported scheme, a missing
    host or a port that is not a number.
    """
    if url is not None:
        raw = url
    elif env.get(ENV_NATS_URL, "").strip():
        raw, origin = env[ENV_NATS_URL], ENV_NATS_URL
    else:
        raw, origin = DEFAULT_NATS_URL, "default"
    servers = [part.strip() for part in raw.split(",") if part.strip()]
    if not servers:
        raise ConfigError(f"{origin} holds no server URL; set it like {DEFAULT_NATS_URL}")
    normalised = []
    for server in servers:
        try:
            normalised.append(_normalise_server(server))
        except ValueError as exc:
            raise ConfigError(
                f"{origin}: {exc}; expected nats://host:port or tls://host:port (a bare "
                f"host:port means nats://host:port)"
            ) from None
    return normalised, origin


def _normalise_server(server: str) -> str:
    """``server`` with a scheme and a port, or ValueError saying which part is wrong."""
    url = _with_scheme(server)
    scheme, sep, rest = url.partition("://")
    # Schemes are case-insensitive, but nats-py only recognises them in lower case.
    url = f"{scheme.lower()}{sep}{rest}"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(
            f"server URL {redact_url(server)} has an unbalanced '[' or ']' in its host"
        ) from None
    if "@" in server and "@" not in parts.netloc:
        raise ValueError(
            "a server URL has an '@' after its host; percent-encode any '/', '?' or '#' in "
            "the user name, password or token"
        )
    shown = redact_url(server)
    if parts.scheme in ("ws", "wss"):
        raise ValueError(f"{shown}: websocket URLs (ws://, wss://) are not supported")
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"the scheme {parts.scheme[:20]!r} of {shown} is not supported")
    if not host:
        raise ValueError(f"server URL {shown} has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        # The port's text is shown only when no credential can have leaked into it.
        quoted = f" ({text[:20]!r})" if "@" not in server else ""
        base = _redact_one(f"{parts.scheme}://{parts.netloc.rpartition(':')[0]}")
        raise ValueError(f"the port of {base} is not a number from 1 to 65535{quoted}")
    if port is None:
        url = urlunsplit(parts._replace(netloc=f"{parts.netloc.rstrip(':')}:4222"))
    return url


def secrets_in(servers: Sequence[str]) -> tuple[str, ...]:
    """Return the credentials embedded in ``servers``, to redact from foreign text.

    Each ``user:password`` or token, and each password on its own; a user name alone is
    not a secret, and is often too short to look for in text.
    """
    found: list[str] = []
    for server in servers:
        try:
            parts = urlsplit(server)
        except ValueError:
            continue
        userinfo, at, _host = parts.netloc.rpartition("@")
        if at and userinfo:
            found.append(userinfo)
        if parts.password:
            found.append(parts.password)
    # Longest first: a whole "user:password" goes before the password inside it.
    return tuple(sorted(set(found), key=len, reverse=True))


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Redact credentials in foreign text (a nats-py or OS error), defence in depth.

    The credential field of every URL in ``text`` becomes ``***`` (whoever's it is), and
    each of ``secrets`` (from :func:`secrets_in`) where it stands on its own, not inside
    a longer word: a user called ``u`` must not turn "secure" into "sec***re".
    """
    text = _URL_USERINFO_RE.sub(r"\1***@", text)
    for secret in secrets:
        text = re.sub(f"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", "***", text)
    return text


# scheme://userinfo@ : the userinfo runs up to the "@", without spaces, quotes or "/".
_URL_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/@'\"]+@")


def ca_file_from(
    ca_file: Optional[str], env: Mapping[str, str], option: str
) -> tuple[Optional[str], str]:
    """The root CA file to trust: ``ca_file`` if given, else ``NATS_CA_FILE``.

    Returns it with where it came from (``option`` or the variable), for error messages.
    """
    if ca_file is not None:
        return ca_file, option
    return env.get(ENV_CA_FILE) or None, ENV_CA_FILE


def root_ca_context(ca_path: str, origin: str) -> ssl.SSLContext:
    """A TLS context trusting only the PEM root CA in ``ca_path`` (hostnames verified).

    Raises :class:`ConfigError` naming ``origin`` when the file cannot be loaded.
    """
    try:
        return ssl.create_default_context(cafile=ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{origin}: cannot load a PEM root CA from {ca_path!r} ({type(exc).__name__}); "
            f"point it at a readable PEM CA bundle"
        ) from None


def tls_required(servers: Sequence[str], tls: Optional[ssl.SSLContext]) -> bool:
    """Whether every connection must be encrypted before credentials are sent."""
    return tls is not None or any(s.startswith("tls://") for s in servers)


# JetStream's rule for stream names: printable ASCII without whitespace, ".", "*", ">",
# or path separators. The CLI checks its --stream with it too.
STREAM_NAME_RE = re.compile(r"(?:(?![.*>/\\])[!-~])+")


def check_positive(name: str, value: object, kind: type = float) -> Any:
    """Return ``value`` if it is a number of ``kind`` above zero; else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return value
