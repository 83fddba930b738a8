"""`InMemoryDiscovery`: the embedded registry for one process, with real TTLs."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from inferno_discovery.errors import (
    DiscoveryClosedError,
    entry_for_update,
)
from inferno_discovery.types import (
    DiscoveryEvent,
    DiscoveryEventKind,
    ServiceInfo,
    ServiceRegistration,
)

__all__ = ["InMemoryDiscovery", "InMemoryRegistry"]

log = structlog.get_logger(__name__)

_Key = tuple[str, str]  # (service, id)


@dataclass(slots=True)
class _Entry:
    registration: ServiceRegistration
    expiry: asyncio.TimerHandle


@dataclass(slots=True, eq=False)  # identity hashing: watchers live in a set
class _Watcher:
    service: str
    queue: asyncio.Queue[DiscoveryEvent | None] = field(default_factory=asyncio.Queue)


class InMemoryRegistry:
    """The shared state behind `InMemoryDiscovery` clients: entries with expiry timers.

    Several clients may share one registry (a worker and a router in one process, or a test
    playing both); each entry expires ``ttl`` seconds after its last refresh, with a
    ``removed`` event, exactly like an etcd lease.
    """

    def __init__(self) -> None:
        self._entries: dict[_Key, _Entry] = {}
        self._watchers: set[_Watcher] = set()

    def put(self, registration: ServiceRegistration, ttl: float) -> None:
        """Insert or replace an entry and (re)start its TTL."""
        key = (registration.service, registration.id)
        previous = self._entries.pop(key, None)
        if previous is not None:
            previous.expiry.cancel()
        handle = asyncio.get_running_loop().call_later(ttl, self._expire, key)
        self._entries[key] = _Entry(registration, handle)
        kind = DiscoveryEventKind.ADDED if previous is None else DiscoveryEventKind.UPDATED
        if previous is None or previous.registration != registration:
            self._emit(DiscoveryEvent(kind, key[0], key[1], registration))

    def refresh(self, service: str, registration_id: str, ttl: float) -> bool:
        """Restart an entry's TTL; False when it has already expired or was removed."""
        entry = self._entries.get((service, registration_id))
        if entry is None:
            return False
        entry.expiry.cancel()
        entry.expiry = asyncio.get_running_loop().call_later(
            ttl, self._expire, (service, registration_id)
        )
        return True

    def remove(self, service: str, registration_id: str) -> None:
        """Remove an entry now (a no-op when absent)."""
        entry = self._entries.pop((service, registration_id), None)
        if entry is not None:
            entry.expiry.cancel()
            self._emit(
                DiscoveryEvent(
                    DiscoveryEventKind.REMOVED, service, registration_id, entry.registration
                )
            )

    def get(self, service: str, registration_id: str) -> ServiceRegistration | None:
        """The live entry, if any."""
        entry = self._entries.get((service, registration_id))
        return None if entry is None else entry.registration

    def list(self, service: str) -> builtins.list[ServiceRegistration]:
        """Live entries of ``service``, sorted by id."""
        found = [e.registration for (s, _), e in self._entries.items() if s == service]
        return sorted(found, key=lambda r: r.id)

    def subscribe(self, service: str) -> _Watcher:
        """A watcher primed with an ``added`` event per live entry (atomic with later events)."""
        watcher = _Watcher(service)
        for registration in self.list(service):
            watcher.queue.put_nowait(
                DiscoveryEvent(DiscoveryEventKind.ADDED, service, registration.id, registration)
            )
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: _Watcher) -> None:
        """Stop delivering to ``watcher``."""
        self._watchers.discard(watcher)

    def _expire(self, key: _Key) -> None:
        log.info("registration_expired", service=key[0], id=key[1])
        self.remove(*key)

    def _emit(self, event: DiscoveryEvent) -> None:
        for watcher in self._watchers:
            if watcher.service == event.service:
                watcher.queue.put_nowait(event)


@dataclass(slots=True)
class _Owned:
    registration: ServiceRegistration
    ttl: float
    keeper: asyncio.Task[None]


class InMemoryDiscovery:
    """A `DiscoveryProvider` held in this process's memory: the default for a single daemon.

    Registrations are kept alive by a keep-alive task per instance and expire after ``ttl``
    seconds without one, like etcd leases. Pass one `InMemoryRegistry` to several clients to
    share the registry between components of one process.
    """

    def __init__(self, registry: InMemoryRegistry | None = None) -> None:
        self.registry = registry if registry is not None else InMemoryRegistry()
        self._owned: dict[str, _Owned] = {}
        self._watchers: set[_Watcher] = set()
        self._closed = False

    async def register(self, registration: ServiceRegistration, ttl: float) -> None:
        """Publish ``registration`` and refresh it every ``ttl / 3`` seconds until deregistered."""
        self._check_open()
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if registration.id in self._owned:
            raise ValueError(f"{registration.id!r} is already registered here; call update()")
        self.registry.put(registration, ttl)
        keeper = asyncio.get_running_loop().create_task(
            self._keep_alive(registration.id), name=f"keepalive-{registration.id}"
        )
        self._owned[registration.id] = _Owned(registration, ttl, keeper)

    async def update(self, registration: ServiceRegistration) -> None:
        """Replace the value of an instance registered here."""
        self._check_open()
        owned = entry_for_update(self._owned, registration)
        owned.registration = registration
        self.registry.put(registration, owned.ttl)

    async def deregister(self, registration_id: str) -> None:
        """Remove an instance registered here (unknown ids are ignored)."""
        owned = self._owned.pop(registration_id, None)
        if owned is None:
            return
        owned.keeper.cancel()
        try:
            await owned.keeper
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self.registry.remove(owned.registration.service, registration_id)

    async def list(self, service: str) -> builtins.list[ServiceInfo]:
        """Live instances of ``service``, sorted by id."""
        self._check_open()
        return self.registry.list(service)

    async def watch(self, service: str) -> AsyncIterator[DiscoveryEvent]:
        """Live instances as ``added`` events, then every change, until closed."""
        self._check_open()
        watcher = self.registry.subscribe(service)
        self._watchers.add(watcher)
        try:
            while (event := await watcher.queue.get()) is not None:
                yield event
        finally:
            self.registry.unsubscribe(watcher)
            self._watchers.discard(watcher)

    async def close(self, *, revoke: bool = True) -> None:
        """End watches and keep-alives; with ``revoke`` (the default) remove registrations now.

        ``revoke=False`` leaves them to expire after their TTL, as if the process had died.
        """
        if self._closed:
            return
        self._closed = True
        for registration_id in list(self._owned):
            if revoke:
                await self.deregister(registration_id)
            else:
                self._owned.pop(registration_id).keeper.cancel()
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    async def _keep_alive(self, registration_id: str) -> None:
        while True:
            owned = self._owned[registration_id]
            await asyncio.sleep(owned.ttl / 3)
            registration = owned.registration
            if not self.registry.refresh(registration.service, registration.id, owned.ttl):
                # Expired anyway (the loop was blocked longer than the TTL): publish again.
                log.warning("registration_lost", service=registration.service, id=registration.id)
                self.registry.put(registration, owned.ttl)

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryClosedError("this InMemoryDiscovery is closed")
