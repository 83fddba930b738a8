"""Build a discovery provider from a URL: ``memory://`` or ``etcd://host:port[/prefix/]``."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from inferno_discovery.errors import InvalidDiscoveryUrlError
from inferno_discovery.etcd import DEFAULT_PREFIX, EtcdDiscovery
from inferno_discovery.memory import InMemoryDiscovery
from inferno_discovery.protocols import DiscoveryProvider

__all__ = ["EtcdUrl", "discovery_from_url", "parse_etcd_url"]

ETCD_DEFAULT_PORT = 2379


class EtcdUrl(NamedTuple):
    """An ``etcd://`` URL, parsed."""

    endpoint: str
    """The gateway base URL, ``http://host:port``."""
    prefix: str
    """The key prefix, always ending with ``/``."""


def parse_etcd_url(url: str) -> EtcdUrl:
    """Parse ``etcd://HOST[:PORT][/PREFIX]`` (``etcds://`` for TLS) into endpoint and prefix.

    The port defaults to 2379 and the prefix to ``/inferno/services/``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcds"):
        raise InvalidDiscoveryUrlError(
            f"{url!r}: expected etcd://HOST:PORT, got scheme {parts.scheme!r}"
        )
    try:
        port = parts.port or ETCD_DEFAULT_PORT
    except ValueError as exc:
        raise InvalidDiscoveryUrlError(f"{url!r}: invalid port ({exc})") from exc
    host = parts.hostname
    if not host:
        raise InvalidDiscoveryUrlError(f"{url!r}: missing host, expected etcd://HOST:PORT")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    http = "https" if parts.scheme == "etcds" else "http"
    prefix = parts.path.rstrip("/") + "/" if parts.path not in ("", "/") else DEFAULT_PREFIX
    return EtcdUrl(f"{http}://{host}:{port}", prefix)


def discovery_from_url(url: str) -> DiscoveryProvider:
    """``memory://`` gives an `InMemoryDiscovery`, ``etcd://HOST:PORT`` an `EtcdDiscovery`."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return InMemoryDiscovery()
    if scheme in ("etcd", "etcds"):
        endpoint, prefix = parse_etcd_url(url)
        return EtcdDiscovery(endpoint, prefix=prefix)
    raise InvalidDiscoveryUrlError(
        f"{url!r}: unsupported discovery URL; use memory:// or etcd://HOST:PORT"
    )
