"""Adapters from the libraries' plain listener callbacks to events on the bus.

The libraries know nothing of the bus; the composition root passes these callables as a
memory tracker's ``on_alert``, a health checker's ``on_change`` and a registrar's
``on_registered``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferno_health import HealthChange, HealthStatus

from inferno_backend.events import EventBus, HealthStatusChanged, MemoryAlert, ServiceRegistered

__all__ = ["health_change_listener", "memory_alert_listener", "registered_listener"]


def memory_alert_listener(bus: EventBus) -> Callable[..., None]:
    """An ``on_alert(stats, threshold=None)`` callback publishing `MemoryAlert`."""

    def on_alert(stats: Any, threshold: float | None = None, *_: Any) -> None:
        bus.publish(MemoryAlert(stats=stats, threshold=threshold))

    return on_alert


def health_change_listener(bus: EventBus) -> Callable[[HealthChange], None]:
    """An ``on_change(change)`` callback publishing `HealthStatusChanged` per changed probe.

    One event for the overall status when it changed, and one per probe whose outcome changed
    (``probe`` names it; ``status`` is HEALTHY when it passes, UNHEALTHY when it fails).
    """

    def on_change(change: HealthChange) -> None:
        current, previous = change.current, change.previous
        if change.status_changed:
            bus.publish(
                HealthStatusChanged(
                    status=current.status,
                    previous=previous.status if previous is not None else None,
                    probe="overall",
                )
            )
        for probe in change.changed_probes:
            ok = current.probe(probe).ok
            was = previous.probe(probe).ok if previous is not None else None
            bus.publish(
                HealthStatusChanged(
                    status=_status(ok),
                    previous=None if was is None else _status(was),
                    probe=str(probe),
                )
            )

    return on_change


def _status(ok: bool) -> HealthStatus:
    return HealthStatus.HEALTHY if ok else HealthStatus.UNHEALTHY


def registered_listener(bus: EventBus) -> Callable[[Any], None]:
    """An ``on_registered(info)`` callback publishing `ServiceRegistered`."""

    def on_registered(info: Any) -> None:
        bus.publish(ServiceRegistered(info=info))

    return on_registered
