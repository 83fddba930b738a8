"""The seam of inferno-health: what `HealthChecker` calls on each provider."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from inferno_health.types import HealthReport, Probe

__all__ = ["HealthProvider"]


@runtime_checkable
class HealthProvider(Protocol):
    """One source of health (a GPU, memory pressure, the engine loop, ...).

    ``name`` is unique within a checker and names the provider in reports and JSON.
    ``probes`` declares which probes (startup, liveness, readiness) this provider's status
    affects: a provider whose failure means "stop sending traffic" but not "restart me" declares
    only readiness.
    """

    @property
    def name(self) -> str:
        """Unique name within a checker."""
        ...

    @property
    def probes(self) -> frozenset[Probe]:
        """The probes this provider's status affects."""
        ...

    async def check(self) -> HealthReport:
        """Measure once and report.

        Called by the checker on every periodic tick and on demand, never concurrently with
        itself from one checker. The checker bounds it with a timeout (a provider that takes
        longer is reported unhealthy with reason ``"timeout"`` and its call is cancelled) and
        turns an exception into an unhealthy report whose reason is the exception, so a provider
        may raise. Blocking work (driver calls) belongs in a thread, so the timeout can fire.
        """
        ...
