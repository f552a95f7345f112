"""Environment variables, their parsing, and URLs made safe to show.

Precedence everywhere: an explicit argument wins, then the environment variable, then the
default. A bad value fails at construction with the variable's name in the message, never
its secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Optional
from urllib.parse import urlsplit

from ._errors import ConfigError

__all__ = [
    "DEFAULT_NATS_URL",
    "ENV_CA_FILE",
    "ENV_NATS_URL",
    "ENV_REQUIRE_JETSTREAM",
    "ENV_USE_NOOP_SINK",
    "env_flag",
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


def redact_url(url: str) -> str:
    """Return ``url`` with any user, password or token replaced by ``***``.

    Works on comma-separated server lists too, and never raises: something that does not
    parse is shown as ``<unparsable url>`` rather than risk echoing a secret.
    """
    return ",".join(_redact_one(part.strip()) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"***@{netloc}"
    return f"{parts.scheme}://{netloc}"


def resolve_servers(
    url: Optional[str], env: Mapping[str, str] = os.environ
) -> tuple[Sequence[str], str]:
    """Pick the server URL list: ``url``, else ``$NATS_URL``, else the default.

    Returns the list for nats-py and the name of where it came from (for error messages).
    Raises :class:`ConfigError` for an empty list or an unsupported scheme.
    """
    if url is not None:
        raw, origin = url, "url argument"
    elif env.get(ENV_NATS_URL, "").strip():
        raw, origin = env[ENV_NATS_URL], ENV_NATS_URL
    else:
        raw, origin = DEFAULT_NATS_URL, "default"
    servers = [part.strip() for part in raw.split(",") if part.strip()]
    if not servers:
        raise ConfigError(f"{origin} holds no server URL; set it like {DEFAULT_NATS_URL}")
    for server in servers:
        try:
            parts = urlsplit(server)
            parts.port  # noqa: B018 - parsing the port validates it
        except ValueError:
            raise ConfigError(
                f"{origin} has an invalid server URL {redact_url(server)}; "
                f"expected nats://host:port or tls://host:port"
            ) from None
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ConfigError(
                f"{origin} has an unsupported server URL {redact_url(server)}; "
                f"expected nats://host:port or tls://host:port"
            )
    return servers, origin


def secrets_in(servers: Sequence[str]) -> tuple[str, ...]:
    """Return the user names, passwords and tokens embedded in ``servers``."""
    found: list[str] = []
    for server in servers:
        try:
            parts = urlsplit(server)
        except ValueError:
            continue
        found.extend(s for s in (parts.username, parts.password) if s)
    return tuple(found)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret in ``text`` with ``***`` (defence in depth for foreign text)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
