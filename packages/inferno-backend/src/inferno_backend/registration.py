"""The daemon's discovery registration, as the orchestrator sees it.

`RegistrationHandle` is the orchestrator's view: ``start`` once the daemon is ready, ``refresh``
whenever the served models change, ``stop`` first thing on shutdown. The composition root puts an
``inferno_discovery.Registrar`` in the described form behind it, which rebuilds the whole
registration (models and load) on every publish, so a model loaded or unloaded through the admin
routes reaches the registry (and the gateways watching it) at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["RegistrationHandle"]


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
