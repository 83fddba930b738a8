"""The seam of inferno-discovery: what workers and routers call on a registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from inferno_discovery.types import DiscoveryEvent, ServiceInfo, ServiceRegistration

__all__ = ["DiscoveryProvider"]


@runtime_checkable
class DiscoveryProvider(Protocol):
    """A service registry with leases.

    A worker calls `register` once when it is ready to serve, `update` whenever its load changes,
    and `deregister` when it stops; a router calls `list` or iterates `watch`. Every method is a
    coroutine on the caller's event loop.
    """

    async def register(self, registration: ServiceRegistration, ttl: float) -> None:
        """Publish ``registration`` under a lease of ``ttl`` seconds, and keep it alive.

        Called once per instance. After it returns, the provider itself keeps the lease alive
        (about every ``ttl / 3`` seconds) until `deregister` or `close`; if the process dies, the
        lease expires and the instance disappears within ``ttl``. Losing the registry later
        never raises: the provider logs, retries and publishes the registration again when the
        registry is back. Raises `DiscoveryUnavailableError` when the registry cannot be reached
        now (nothing is kept then), and ``ValueError`` when the id is already registered here.
        """
        ...

    async def update(self, registration: ServiceRegistration) -> None:
        """Replace the published value of an instance registered through this provider.

        Typically called with fresh load signals. When the registry is unreachable the new value
        is kept and published on reconnection, without raising. Raises
        `UnknownRegistrationError` for an id this provider has not registered.
        """
        ...

    async def deregister(self, registration_id: str) -> None:
        """Remove an instance registered through this provider and revoke its lease.

        Unknown ids are ignored. If the registry is unreachable the keep-alive stops anyway, so
        the instance disappears when its lease expires.
        """
        ...

    async def list(self, service: str) -> list[ServiceInfo]:
        """The live instances of ``service``, sorted by id.

        Raises `DiscoveryUnavailableError` when the registry cannot be reached.
        """
        ...

    def watch(self, service: str) -> AsyncIterator[DiscoveryEvent]:
        """Stream changes to ``service``: first an ``added`` event per live instance, then
        ``added``/``updated``/``removed`` as they happen, in order, each exactly once.

        The stream survives registry outages (it resumes where it stopped) and ends when the
        provider is closed or the iterator is closed.
        """
        ...

    async def close(self) -> None:
        """Deregister everything registered here, end all watches and release connections."""
        ...
