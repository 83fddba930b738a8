"""Test doubles for packages that use discovery: a recording provider that can fail on demand."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inferno_discovery.errors import DiscoveryUnavailableError
from inferno_discovery.memory import InMemoryDiscovery
from inferno_discovery.protocols import DiscoveryProvider
from inferno_discovery.types import DiscoveryEvent, ServiceInfo, ServiceRegistration

__all__ = ["RecordedCall", "RecordingDiscovery"]


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One call made on a `RecordingDiscovery`: the method name and its arguments."""

    method: str
    args: tuple[Any, ...]


class RecordingDiscovery:
    """A `DiscoveryProvider` that records every call and forwards it to ``upstream``.

    ``upstream`` defaults to a fresh `InMemoryDiscovery`, so registrations really appear in
    `list` and `watch`. Set ``unavailable = True`` to make register/update/list raise
    `DiscoveryUnavailableError` as if the registry were down (calls are still recorded).
    """

    def __init__(self, upstream: DiscoveryProvider | None = None) -> None:
        self.upstream: DiscoveryProvider = upstream if upstream is not None else InMemoryDiscovery()
        self.calls: builtins.list[RecordedCall] = []
        self.unavailable = False

    def calls_to(self, method: str) -> builtins.list[RecordedCall]:
        """The recorded calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    @property
    def registered(self) -> builtins.list[ServiceRegistration]:
        """Every registration passed to ``register`` or ``update``, in call order."""
        return [c.args[0] for c in self.calls if c.method in ("register", "update")]

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append(RecordedCall(method, args))

    def _fail_if_down(self, method: str) -> None:
        if self.unavailable:
            raise DiscoveryUnavailableError(f"RecordingDiscovery.{method}: registry marked down")

    async def register(self, registration: ServiceRegistration, ttl: float) -> None:
        """Record, then forward (or fail when ``unavailable``)."""
        self._record("register", registration, ttl)
        self._fail_if_down("register")
        await self.upstream.register(registration, ttl)

    async def update(self, registration: ServiceRegistration) -> None:
        """Record, then forward (or fail when ``unavailable``)."""
        self._record("update", registration)
        self._fail_if_down("update")
        await self.upstream.update(registration)

    async def deregister(self, registration_id: str) -> None:
        """Record, then forward."""
        self._record("deregister", registration_id)
        await self.upstream.deregister(registration_id)

    async def list(self, service: str) -> builtins.list[ServiceInfo]:
        """Record, then forward (or fail when ``unavailable``)."""
        self._record("list", service)
        self._fail_if_down("list")
        return await self.upstream.list(service)

    def watch(self, service: str) -> AsyncIterator[DiscoveryEvent]:
        """Record, then forward."""
        self._record("watch", service)
        return self.upstream.watch(service)

    async def close(self) -> None:
        """Record, then forward."""
        self._record("close")
        await self.upstream.close()
