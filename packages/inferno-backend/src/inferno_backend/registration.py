"""The daemon's discovery registration: what the orchestrator calls, and the default keeper.

`RegistrationHandle` is the orchestrator's view: ``start`` once the daemon is ready, ``refresh``
whenever the served models change, ``stop`` first thing on shutdown.

`DaemonRegistrar` is what the composition root puts behind it. Unlike
``inferno_discovery.Registrar`` (whose registration is fixed except for its load signals), it
rebuilds the whole registration from a ``describe`` callable on every publish, so a model loaded
or unloaded through the admin routes reaches the registry (and the gateways watching it) at
once instead of never.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from inferno_discovery import DiscoveryError, DiscoveryProvider, ServiceRegistration

__all__ = ["DaemonRegistrar", "RegistrationHandle", "RegistrationListener"]

log = structlog.get_logger(__name__)

RegistrationListener = Callable[[ServiceRegistration], object]
"""A plain callable told about the registration; what it returns is ignored."""


async def _call(function: Callable[[], Any] | None) -> None:
    if function is None:
        return
    result = function()
    if asyncio.iscoroutine(result):
        await result


class RegistrationHandle:
    """How the orchestrator starts, refreshes and revokes its discovery registration.

    Each callable may be plain or a coroutine function. ``start`` is called once the daemon is
    ready, ``refresh`` after a model was loaded or began unloading while ready (so the
    registry lists what the daemon serves), and ``stop`` first thing on shutdown.
    """

    def __init__(
        self,
        start: Callable[[], Any],
        stop: Callable[[], Any],
        service_id: str,
        *,
        refresh: Callable[[], Any] | None = None,
    ) -> None:
        self._start = start
        self._stop = stop
        self._refresh = refresh
        self.service_id = service_id

    async def start(self) -> None:
        """Register (and keep the registration alive)."""
        await _call(self._start)

    async def refresh(self) -> None:
        """Publish the registration again (the served models changed)."""
        await _call(self._refresh)

    async def stop(self) -> None:
        """Revoke the registration."""
        await _call(self._stop)


class DaemonRegistrar:
    """Keeps one registration in ``provider``, rebuilt by ``describe`` on every publish.

    `start` registers under a lease of ``ttl`` seconds (the provider keeps the lease alive), then
    publishes a fresh description every ``interval`` (default ``ttl / 3``) so load signals stay
    current; `refresh` publishes one now. Publishes are serialized, so a periodic refresh that
    began before a model change can never land after it with the stale model list.

    Nothing raises into the serving path: an unreachable registry at `start` is logged and
    retried each interval, and a failing ``describe`` keeps the last published value.

    Args:
        provider: the registry.
        describe: the registration as of now (id, address, models, load signals).
        ttl: lease seconds; a daemon that dies disappears from the registry within it.
        interval: seconds between periodic publishes.
        on_registered: told once the registration is first published.
        on_deregistered: told after `stop` removed it.
    """

    def __init__(
        self,
        provider: DiscoveryProvider,
        describe: Callable[[], ServiceRegistration],
        *,
        ttl: float,
        interval: float | None = None,
        on_registered: Iterable[RegistrationListener] = (),
        on_deregistered: Iterable[RegistrationListener] = (),
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.provider = provider
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self._describe = describe
        self._on_registered = list(on_registered)
        self._on_deregistered = list(on_deregistered)
        self._registration: ServiceRegistration | None = None
        self._registered = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def registration(self) -> ServiceRegistration | None:
        """The last registration published (None before the first)."""
        return self._registration

    @property
    def registered(self) -> bool:
        """Whether the registration is published and not yet removed."""
        return self._registered

    async def start(self) -> None:
        """Try to register now, then publish periodically in the background."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="daemon-registrar")

    async def refresh(self) -> None:
        """Publish the current description now (registering it if that has not succeeded)."""
        async with self._lock:
            try:
                registration = self._describe()
            except Exception:
                log.exception("describing the registration failed; keeping the last one")
                if self._registration is None:
                    return
                registration = self._registration
            try:
                if self._registered:
                    await self.provider.update(registration)
                else:
                    await self.provider.register(registration, self.ttl)
            except DiscoveryError as exc:
                log.warning(
                    "publishing the registration failed; will retry",
                    id=registration.id,
                    error=str(exc),
                )
                return
            self._registration = registration
            if not self._registered:
                self._registered = True
                log.info("registered", id=registration.id, models=list(registration.models))
                self._notify(self._on_registered, registration)

    async def stop(self) -> None:
        """Stop publishing and deregister (revoking the lease at once, not at its expiry)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        async with self._lock:
            if not self._registered or self._registration is None:
                return
            self._registered = False
            try:
                await self.provider.deregister(self._registration.id)
            except DiscoveryError as exc:
                log.warning("deregister failed", id=self._registration.id, error=str(exc))
            self._notify(self._on_deregistered, self._registration)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    @staticmethod
    def _notify(listeners: list[RegistrationListener], registration: ServiceRegistration) -> None:
        for listener in listeners:
            try:
                listener(registration)
            except Exception:
                log.exception("registration listener failed", listener=repr(listener))
