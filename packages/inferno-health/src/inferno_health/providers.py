"""General providers: any callable, and memory pressure from a statistics snapshot."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from inferno_health.types import ALL_PROBES, HealthReport, HealthStatus, Probe

__all__ = [
    "CallableProvider",
    "CheckResult",
    "MemoryPressureProvider",
    "MemoryUsage",
    "NamedProvider",
]

CheckResult = HealthReport | HealthStatus | bool
"""What a `CallableProvider`'s function may return: a full report, a bare status, or a bool
(True is healthy, False unhealthy)."""


class NamedProvider:
    """Base of the providers here: the ``name`` and ``probes`` the checker reads.

    Subclasses set ``_name`` and ``_probes`` in their constructor and implement ``check``.
    """

    _name: str
    _probes: frozenset[Probe]

    @property
    def name(self) -> str:
        """The provider's name."""
        return self._name

    @property
    def probes(self) -> frozenset[Probe]:
        """The probes this provider affects."""
        return self._probes


class CallableProvider(NamedProvider):
    """A provider around a function, for health that needs no class of its own.

    ``check`` is called with no arguments and may be sync or async; it returns a `CheckResult`.
    A sync function runs on the event loop, so it must be quick (the checker's timeout cannot
    interrupt a blocking call); put blocking work in an async function using a thread.

    Example: ``CallableProvider("engine", lambda: engine_thread.is_alive())``.
    """

    def __init__(
        self,
        name: str,
        check: Callable[[], CheckResult | Awaitable[CheckResult]],
        *,
        probes: Iterable[Probe] = ALL_PROBES,
    ) -> None:
        if not name:
            raise ValueError("name must be a non-empty string")
        self._name = name
        self._check = check
        self._probes = frozenset(probes)

    async def check(self) -> HealthReport:
        """Call the function and turn what it returned into a report."""
        result = self._check()
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, HealthReport):
            return result
        if isinstance(result, HealthStatus):
            return HealthReport(status=result)
        if isinstance(result, bool):
            if result:
                return HealthReport.healthy()
            return HealthReport.unhealthy(f"{self._name} check returned False")
        raise TypeError(
            f"health check {self._name!r} returned {type(result).__name__}; "
            "expected HealthReport, HealthStatus or bool"
        )


class MemoryUsage(NamedTuple):
    """Bytes in use and the limit they count against (None or 0: no limit)."""

    used_bytes: int
    limit_bytes: int | None


class MemoryPressureProvider(NamedProvider):
    """Degraded when used/limit exceeds ``warn_fraction``, unhealthy above ``critical_fraction``.

    ``usage`` returns a fresh `MemoryUsage` (or any ``(used_bytes, limit_bytes)`` pair), e.g.
    read from a memory pool's statistics. By default memory pressure affects readiness only:
    a full pool means "send traffic elsewhere", not "restart me".
    """

    def __init__(
        self,
        usage: Callable[[], tuple[int, int | None]],
        *,
        name: str = "memory",
        warn_fraction: float = 0.90,
        critical_fraction: float = 0.98,
        probes: Iterable[Probe] = (Probe.READINESS,),
    ) -> None:
        if not 0 < warn_fraction <= 1:
            raise ValueError(f"warn_fraction must be in (0, 1], got {warn_fraction}")
        if not warn_fraction <= critical_fraction <= 1:
            raise ValueError(
                f"critical_fraction must be in [warn_fraction={warn_fraction}, 1], "
                f"got {critical_fraction}"
            )
        self._usage = usage
        self._name = name
        self.warn_fraction = warn_fraction
        self.critical_fraction = critical_fraction
        self._probes = frozenset(probes)

    async def check(self) -> HealthReport:
        """Read the usage once and classify it against the two fractions."""
        used, limit = self._usage()
        if used < 0 or (limit is not None and limit < 0):
            raise ValueError(f"memory usage must be non-negative, got used={used} limit={limit}")
        data: dict[str, object] = {"used_bytes": used, "limit_bytes": limit or None}
        if not limit:
            return HealthReport.healthy("no memory limit", data)
        fraction = used / limit
        data["used_fraction"] = round(fraction, 6)
        data["warn_fraction"] = self.warn_fraction
        data["critical_fraction"] = self.critical_fraction
        summary = f"memory {fraction:.1%} used ({used} of {limit} bytes)"
        if fraction > self.critical_fraction:
            return HealthReport.unhealthy(
                f"{summary}, above critical {self.critical_fraction:.0%}", data
            )
        if fraction > self.warn_fraction:
            return HealthReport.degraded(f"{summary}, above warning {self.warn_fraction:.0%}", data)
        return HealthReport.healthy(data=data)
