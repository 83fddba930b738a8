"""`Registrar`: keeps one registration alive with fresh load signals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import structlog

from inferno_discovery.errors import DiscoveryError
from inferno_discovery.protocols import DiscoveryProvider
from inferno_discovery.types import LoadSignals, ServiceInfo, ServiceRegistration

__all__ = ["Registrar", "RegistrationListener"]

log = structlog.get_logger(__name__)

RegistrationListener = Callable[[ServiceInfo], object]
"""A plain callable told about a registration; what it returns is ignored."""


class Registrar:
    """Registers ``registration`` with ``provider`` and refreshes its load every ``interval``.

    ``load`` returns fresh `LoadSignals` (e.g. from the engine's stats); it is called before
    registering and on every refresh, so routers read current load from the registry instead
    of scraping workers. ``interval`` defaults to ``ttl / 3``, the keep-alive cadence.

    Nothing here raises into the serving path: when the registry is unreachable at `start`, the
    registrar logs and keeps trying each interval; a failing ``load`` keeps the last signals.
    ``on_registered`` listeners run once the registration is published, ``on_deregistered``
    ones after `stop` removed it; a listener that raises is logged and ignored.
    """

    def __init__(
        self,
        provider: DiscoveryProvider,
        registration: ServiceRegistration,
        *,
        ttl: float = 10.0,
        load: Callable[[], LoadSignals] | None = None,
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
        self._registration = registration
        self._load = load
        self._on_registered = list(on_registered)
        self._on_deregistered = list(on_deregistered)
        self._registered = False
        self._task: asyncio.Task[None] | None = None

    @property
    def registration(self) -> ServiceRegistration:
        """The latest registration (with the latest load signals)."""
        return self._registration

    @property
    def registered(self) -> bool:
        """Whether the registration has been published and not yet removed."""
        return self._registered

    async def start(self) -> None:
        """Try to register now, then refresh (or retry) in the background."""
        if self._task is not None:
            return
        await self._register()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"registrar-{self._registration.id}"
        )

    async def stop(self) -> None:
        """Stop refreshing and deregister (tells ``on_deregistered`` listeners)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        if not self._registered:
            return
        self._registered = False
        try:
            await self.provider.deregister(self._registration.id)
        except DiscoveryError as exc:
            log.warning("deregister_failed", id=self._registration.id, error=str(exc))
        self._notify(self._on_deregistered)

    async def refresh(self) -> None:
        """Publish fresh load signals now (or register, if that has not succeeded yet)."""
        if not self._registered:
            await self._register()
            return
        self._registration = self._with_fresh_load()
        try:
            await self.provider.update(self._registration)
        except DiscoveryError as exc:
            log.warning("load_refresh_failed", id=self._registration.id, error=str(exc))

    async def _register(self) -> None:
        self._registration = self._with_fresh_load()
        try:
            await self.provider.register(self._registration, self.ttl)
        except DiscoveryError as exc:
            log.warning("register_failed_will_retry", id=self._registration.id, error=str(exc))
            return
        self._registered = True
        self._notify(self._on_registered)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    def _with_fresh_load(self) -> ServiceRegistration:
        if self._load is None:
            return self._registration
        try:
            return self._registration.with_load(self._load())
        except Exception:
            log.exception("load_signals_failed", id=self._registration.id)
            return self._registration

    def _notify(self, listeners: list[RegistrationListener]) -> None:
        for listener in listeners:
            try:
                listener(self._registration)
            except Exception:
                log.exception("registration_listener_failed", listener=repr(listener))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
