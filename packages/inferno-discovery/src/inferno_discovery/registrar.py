"""`Registrar`: keeps one registration alive in a registry, republished with fresh values."""

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


def _with_fresh_load(
    registration: ServiceRegistration, load: Callable[[], LoadSignals] | None
) -> Callable[[], ServiceRegistration]:
    """The fixed form as a description: ``registration`` carrying ``load()``'s signals."""
    if load is None:
        return lambda: registration
    return lambda: registration.with_load(load())


class Registrar:
    """Keeps one registration in ``provider``, republished every ``interval`` seconds.

    The registration comes in one of two forms:

    - fixed: ``Registrar(provider, registration, load=...)``. Only the load signals change;
      ``load`` (e.g. reading the engine's stats) is called before registering and on every
      publish, so routers read current load from the registry instead of scraping workers.
    - described: ``Registrar(provider, describe=...)``. ``describe`` returns the whole
      registration as of now (address, models, load signals) and is called on every publish,
      so a worker whose served models change publishes them with `refresh`. Its ``id`` and
      ``service`` must stay the same across calls.

    `start` registers under a lease of ``ttl`` seconds (the provider keeps the lease alive), then
    publishes every ``interval`` (default ``ttl / 3``, the keep-alive cadence); `refresh`
    publishes now. Publishes are serialized: each one describes and sends under one lock, so a
    periodic publish that began before a change can never land after it with stale values.

    Nothing here raises into the serving path: when the registry is unreachable the registrar
    logs and retries each interval, and a failing ``load`` or ``describe`` keeps the latest
    value it produced (the described form publishes nothing until ``describe`` first succeeds).
    ``on_registered`` listeners run once the registration is published, ``on_deregistered``
    ones after `stop` removed it; a listener that raises is logged and ignored.

    Args:
        provider: the registry.
        registration: the fixed registration (not with ``describe``).
        describe: the registration as of now (not with ``registration``).
        ttl: lease seconds; a worker that dies disappears from the registry within it.
        load: fresh load signals for the fixed form (not with ``describe``).
        interval: seconds between periodic publishes.
        on_registered: told once the registration is published.
        on_deregistered: told after `stop` removed it.
    """

    def __init__(
        self,
        provider: DiscoveryProvider,
        registration: ServiceRegistration | None = None,
        *,
        describe: Callable[[], ServiceRegistration] | None = None,
        ttl: float = 10.0,
        load: Callable[[], LoadSignals] | None = None,
        interval: float | None = None,
        on_registered: Iterable[RegistrationListener] = (),
        on_deregistered: Iterable[RegistrationListener] = (),
    ) -> None:
        if registration is not None and describe is not None:
            raise ValueError(
                "Registrar takes either a fixed `registration` or `describe`, not both"
            )
        if describe is not None and load is not None:
            raise ValueError(
                "Registrar: `load` only applies to a fixed `registration`; "
                "with `describe`, put the load signals in the described registration"
            )
        if describe is None:
            if registration is None:
                raise ValueError(
                    "Registrar needs a `registration` (fixed, with optional `load`) "
                    "or `describe` (rebuilt on every publish)"
                )
            describe = _with_fresh_load(registration, load)
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.provider = provider
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self._registration = registration
        self._describe = describe
        self._on_registered = list(on_registered)
        self._on_deregistered = list(on_deregistered)
        self._published: ServiceRegistration | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def registration(self) -> ServiceRegistration | None:
        """The latest registration produced (with the latest load signals).

        It is what was last published, or what waits for the registry to come back. None only
        in the described form before ``describe`` first succeeded.
        """
        return self._registration

    @property
    def registered(self) -> bool:
        """Whether the registration has been published and not yet removed."""
        return self._published is not None

    async def start(self) -> None:
        """Try to register now, then publish (or retry) every ``interval`` in the background."""
        if self._task is not None:
            return
        await self.refresh()
        name = f"registrar-{self._registration.id}" if self._registration else "registrar"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def refresh(self) -> None:
        """Publish fresh values now (registering them, if that has not succeeded yet)."""
        async with self._lock:
            registration = self._current()
            if registration is None:
                return
            self._registration = registration
            first = self._published is None
            try:
                if first:
                    await self.provider.register(registration, self.ttl)
                else:
                    await self.provider.update(registration)
            except DiscoveryError as exc:
                event = "register_failed_will_retry" if first else "refresh_failed_will_retry"
                log.warning(event, id=registration.id, error=str(exc))
                return
            self._published = registration
            if first:
                log.info("registered", id=registration.id, models=list(registration.models))
                self._notify(self._on_registered, registration)

    async def stop(self) -> None:
        """Stop publishing and deregister (revoking the lease now, not at its expiry).

        Tells ``on_deregistered`` listeners; calling it again does nothing.
        """
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
            published, self._published = self._published, None
            if published is None:
                return
            try:
                await self.provider.deregister(published.id)
            except DiscoveryError as exc:
                log.warning("deregister_failed", id=published.id, error=str(exc))
            self._notify(self._on_deregistered, published)

    def _current(self) -> ServiceRegistration | None:
        """The registration to publish now; the latest one if producing a fresh one fails."""
        try:
            return self._describe()
        except Exception:
            latest = self._registration
            log.exception("registration_refresh_failed_keeping_last", id=latest and latest.id)
            return latest

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
