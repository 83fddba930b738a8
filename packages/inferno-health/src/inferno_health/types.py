"""Value objects of inferno-health: statuses, probes, reports and the aggregate snapshot."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ALL_PROBES",
    "HealthChange",
    "HealthReport",
    "HealthSnapshot",
    "HealthStatus",
    "Probe",
    "ProbeFailure",
    "ProbeResult",
    "ProviderResult",
]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every ``checked_at`` holds)."""
    return datetime.now(UTC)


class HealthStatus(enum.StrEnum):
    """How well a component works, from best to worst."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def severity(self) -> int:
        """0 for healthy, 1 for degraded, 2 for unhealthy: larger is worse."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, statuses: Iterable[HealthStatus]) -> HealthStatus:
        """The worst of ``statuses``; healthy when there are none."""
        return max(statuses, key=lambda s: s.severity, default=cls.HEALTHY)


_SEVERITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}


class Probe(enum.StrEnum):
    """The three probes Kubernetes defines.

    - ``startup``: has the process finished starting? Passes from the first check in which no
      provider affecting it is unhealthy, and stays passed.
    - ``liveness``: can the process still make progress? Failing means "restart me".
    - ``readiness``: should the process get traffic now? Failing means "route around me".
    """

    STARTUP = "startup"
    LIVENESS = "liveness"
    READINESS = "readiness"


ALL_PROBES: frozenset[Probe] = frozenset(Probe)
"""Every probe; the default for providers whose failure means the process cannot serve."""


class HealthReport(BaseModel):
    """What one provider found in one check.

    ``reason`` says in words why the status is not healthy (or notes something worth knowing);
    ``data`` holds JSON-compatible measurements (temperatures, byte counts, ...).
    """

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    checked_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def healthy(cls, reason: str | None = None, data: dict[str, Any] | None = None) -> HealthReport:
        """A healthy report."""
        return cls(status=HealthStatus.HEALTHY, reason=reason, data=data or {})

    @classmethod
    def degraded(cls, reason: str, data: dict[str, Any] | None = None) -> HealthReport:
        """A degraded report: working, but worse than it should."""
        return cls(status=HealthStatus.DEGRADED, reason=reason, data=data or {})

    @classmethod
    def unhealthy(cls, reason: str, data: dict[str, Any] | None = None) -> HealthReport:
        """An unhealthy report: not working."""
        return cls(status=HealthStatus.UNHEALTHY, reason=reason, data=data or {})


class ProviderResult(BaseModel):
    """One provider's latest report, with the probes it affects and how long it took."""

    model_config = ConfigDict(frozen=True)

    name: str
    probes: frozenset[Probe]
    status: HealthStatus
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    checked_at: datetime
    duration_s: float = Field(ge=0)


class ProbeFailure(BaseModel):
    """Why a probe fails: a provider's name (or ``"gate"``/``"startup"``) and its reason."""

    model_config = ConfigDict(frozen=True)

    source: str
    status: HealthStatus
    reason: str | None = None


class ProbeResult(BaseModel):
    """Whether one probe passes, and if not, every cause."""

    model_config = ConfigDict(frozen=True)

    probe: Probe
    ok: bool
    failures: tuple[ProbeFailure, ...] = ()


class HealthSnapshot(BaseModel):
    """The aggregate after a check: overall status, every provider, every probe.

    ``status`` is the worst provider status. The probes apply the Kubernetes semantics described
    on `Probe`, plus the manual readiness gate (``ready_gate_open``/``ready_gate_reason``).
    ``to_json()`` is the machine-readable form served by health endpoints.
    """

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    checked_at: datetime | None
    providers: dict[str, ProviderResult]
    probes: dict[Probe, ProbeResult]
    ready_gate_open: bool = True
    ready_gate_reason: str | None = None

    @property
    def live(self) -> bool:
        """Whether the liveness probe passes."""
        return self.probes[Probe.LIVENESS].ok

    @property
    def ready(self) -> bool:
        """Whether the readiness probe passes."""
        return self.probes[Probe.READINESS].ok

    @property
    def started(self) -> bool:
        """Whether the startup probe passes."""
        return self.probes[Probe.STARTUP].ok

    def probe(self, probe: Probe | str) -> ProbeResult:
        """The result of one probe (accepts ``"readiness"`` as well as `Probe.READINESS`)."""
        return self.probes[Probe(probe)]

    def failing(self) -> dict[str, ProviderResult]:
        """The providers that are not healthy, by name."""
        return {n: r for n, r in self.providers.items() if r.status is not HealthStatus.HEALTHY}

    def to_json(self) -> str:
        """The snapshot as JSON (statuses as strings, times in ISO 8601)."""
        return self.model_dump_json()


class HealthChange(BaseModel):
    """Passed to ``on_change`` listeners when the overall status, a provider's status or a
    probe's outcome changed. ``previous`` is None for the very first check."""

    model_config = ConfigDict(frozen=True)

    previous: HealthSnapshot | None
    current: HealthSnapshot
    changed_providers: tuple[str, ...] = ()
    changed_probes: tuple[Probe, ...] = ()

    @property
    def status_changed(self) -> bool:
        """Whether the overall status differs from the previous snapshot's."""
        return self.previous is None or self.previous.status is not self.current.status
