"""Typed errors of inferno-discovery."""

from __future__ import annotations

__all__ = [
    "DiscoveryClosedError",
    "DiscoveryError",
    "DiscoveryUnavailableError",
    "EtcdError",
    "InvalidDiscoveryUrlError",
    "UnknownRegistrationError",
]


class DiscoveryError(Exception):
    """Base class of discovery errors."""


class DiscoveryUnavailableError(DiscoveryError):
    """The registry cannot be reached (connection refused, timeout, server unavailable)."""


class DiscoveryClosedError(DiscoveryError):
    """The provider was closed and accepts no more calls."""


class UnknownRegistrationError(DiscoveryError, LookupError):
    """An id that this provider did not register (or already deregistered)."""


class InvalidDiscoveryUrlError(DiscoveryError, ValueError):
    """A discovery URL that cannot be parsed or names an unsupported scheme."""


class EtcdError(DiscoveryError):
    """etcd answered with an error; ``code`` is its gRPC status code (5 = not found)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
