"""Liveness, readiness and startup health with machine-readable reasons; NVML GPU health."""

from inferno_health.checker import ChangeListener, HealthChecker
from inferno_health.gpu import GpuHealthProvider
from inferno_health.protocols import HealthProvider
from inferno_health.providers import (
    CallableProvider,
    CheckResult,
    MemoryPressureProvider,
    MemoryUsage,
)
from inferno_health.types import (
    ALL_PROBES,
    HealthChange,
    HealthReport,
    HealthSnapshot,
    HealthStatus,
    Probe,
    ProbeFailure,
    ProbeResult,
    ProviderResult,
)

__all__ = [
    "ALL_PROBES",
    "CallableProvider",
    "ChangeListener",
    "CheckResult",
    "GpuHealthProvider",
    "HealthChange",
    "HealthChecker",
    "HealthProvider",
    "HealthReport",
    "HealthSnapshot",
    "HealthStatus",
    "MemoryPressureProvider",
    "MemoryUsage",
    "Probe",
    "ProbeFailure",
    "ProbeResult",
    "ProviderResult",
]
