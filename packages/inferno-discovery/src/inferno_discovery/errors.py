"""Typed errors of inferno-discovery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from inferno_discovery.types import ServiceRegistration

__all__ = [
    "DiscoveryClosedError",
    "DiscoveryError",
    "DiscoveryUnavailableError",
    "EtcdError",
    "InvalidDiscoveryUrlError",
    "UnknownRegistrationError",
    "WatchIdleError",
]


class DiscoveryError(Exception):
    """Base class of discovery errors."""


class DiscoveryUnavailableError(DiscoveryError):
    """The registry cannot be reached (connection refused, timeout, server unavailable)."""


class WatchIdleError(DiscoveryUnavailableError):
    """A watch stream sent nothing for its idle timeout: a quiet registry, or a connection
    that a network partition left open but dead."""


class DiscoveryClosedError(DiscoveryError):
    """The provider was closed and accepts no more calls."""


class UnknownRegistrationError(DiscoveryError, LookupError):
    """An id that this provider did not register (or already deregistered)."""


class _Entry(Protocol):
    @property
    def registration(self) -> ServiceRegistration: ...


_E = TypeVar("_E", bound=_Entry)


def entry_for_update(entries: Mapping[str, _E], new: ServiceRegistration) -> _E:
    """The entry ``new`` may replace, by the rule every provider's ``update`` enforces: a
    registration this provider made, for the same service.

    Raises:
        UnknownRegistrationError: ``new.id`` is not registered here.
        ValueError: ``new`` names another service than the registered one.
    """
    entry = entries.get(new.id)
    if entry is None:
        raise UnknownRegistrationError(f"{new.id!r} is not registered here")
    current = entry.registration
    if current.service != new.service:
        raise ValueError(
            f"{new.id!r} is registered for service {current.service!r}, not {new.service!r}"
        )
    return entry


class InvalidDiscoveryUrlError(DiscoveryError, ValueError):
    """A discovery URL that cannot be parsed or names an unsupported scheme."""


class EtcdError(DiscoveryError):
    """etcd answered with an error; ``code`` is its gRPC status code (5 = not found)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
