"""GPU health through NVML (``pip install inferno-health[gpu]`` for ``pynvml``).

The NVML module is injected (``GpuHealthProvider(nvml=inferno_health.testing.FakeNvml(...))``),
so the logic is tested without a GPU; by default ``pynvml`` is imported on the first check.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

from inferno_health.providers import NamedProvider
from inferno_health.types import ALL_PROBES, HealthReport, HealthStatus, Probe

__all__ = ["THROTTLE_REASONS", "GpuHealthProvider"]

log = structlog.get_logger(__name__)

# NVML's clock throttle ("clocks event") reason bits, stable across driver versions.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the hardware is protecting itself (heat, power delivery), not policy.
_DEGRADING_THROTTLES = frozenset(
    {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_TEMPERATURE_GPU = 0
_NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0


class GpuHealthProvider(NamedProvider):
    """Temperature, memory, utilization, uncorrected ECC errors and throttling of each GPU.

    Per GPU: uncorrected volatile ECC errors or a failing NVML query (e.g. "GPU is lost") are
    unhealthy; a temperature at or above ``temperature_critical_c`` is unhealthy, at or above
    ``temperature_warn_c`` degraded; thermal or power-brake throttling is degraded. The report
    is the worst GPU's status, with every GPU's measurements under ``data["gpus"]``.

    Without a GPU (``pynvml`` missing, no driver, zero devices) the report says ``"no GPU: ..."``
    with ``data["gpu_count"] == 0``: healthy by default, unhealthy when ``require_gpu``.
    NVML calls block, so they run in a worker thread and the checker's timeout can fire.
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        name: str = "gpu",
        devices: Sequence[int] | None = None,
        temperature_warn_c: int = 85,
        temperature_critical_c: int = 95,
        require_gpu: bool = False,
        probes: Iterable[Probe] = ALL_PROBES,
    ) -> None:
        if temperature_warn_c > temperature_critical_c:
            raise ValueError(
                f"temperature_warn_c ({temperature_warn_c}) must not exceed "
                f"temperature_critical_c ({temperature_critical_c})"
            )
        self._nvml = nvml
        self._name = name
        self._devices = None if devices is None else tuple(devices)
        self.temperature_warn_c = temperature_warn_c
        self.temperature_critical_c = temperature_critical_c
        self.require_gpu = require_gpu
        self._probes = frozenset(probes)
        self._initialised = False
        self._lock = threading.Lock()

    async def check(self) -> HealthReport:
        """Sample every GPU once (in a worker thread) and report the worst."""
        return await asyncio.to_thread(self.sample)

    def sample(self) -> HealthReport:
        """The blocking part of `check`: initialise NVML if needed and query each GPU."""
        with self._lock:
            nvml = self._load_nvml()
            if nvml is None:
                return self._no_gpu(
                    "nvidia-ml-py is not installed (pip install inferno-health[gpu])"
                )
            if not self._initialised:
                try:
                    nvml.nvmlInit()
                except nvml.NVMLError as exc:
                    return self._no_gpu(f"NVML could not initialise ({_describe(exc)})")
                self._initialised = True
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as exc:
                return self._no_gpu(f"NVML could not count devices ({_describe(exc)})")
            if count == 0:
                return self._no_gpu("NVML reports no devices")
            indices = self._devices if self._devices is not None else tuple(range(count))
            gpus = [self._sample_device(nvml, i, count) for i in indices]
        status = HealthStatus.worst(HealthStatus(g["status"]) for g in gpus)
        problems = [f"gpu{g['index']}: {g['reason']}" for g in gpus if g["reason"]]
        data = {"gpu_count": count, "gpus": gpus}
        return HealthReport(status=status, reason="; ".join(problems) or None, data=data)

    def close(self) -> None:
        """Release NVML (the next check initialises it again)."""
        with self._lock:
            if self._initialised and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as exc:
                    log.warning("nvml_shutdown_failed", error=_describe(exc))
            self._initialised = False

    def _load_nvml(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                return None
        return self._nvml

    def _no_gpu(self, why: str) -> HealthReport:
        status = HealthStatus.UNHEALTHY if self.require_gpu else HealthStatus.HEALTHY
        return HealthReport(status=status, reason=f"no GPU: {why}", data={"gpu_count": 0})

    def _sample_device(self, nvml: Any, index: int, count: int) -> dict[str, Any]:
        gpu: dict[str, Any] = {"index": index}
        if not 0 <= index < count:
            reason = f"no such device (NVML reports {count})"
            return gpu | {"status": HealthStatus.UNHEALTHY.value, "reason": reason}
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            gpu["name"] = name.decode() if isinstance(name, bytes) else str(name)
            gpu["temperature_c"] = int(
                nvml.nvmlDeviceGetTemperature(
                    handle, getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU)
                )
            )
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpu["memory_total_bytes"] = int(memory.total)
            gpu["memory_used_bytes"] = int(memory.used)
            # MIG instances and some virtual GPUs report no utilization: None, not a failure.
            utilization = _supported(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
            gpu["utilization_gpu_percent"] = None if utilization is None else int(utilization.gpu)
            gpu["utilization_memory_percent"] = (
                None if utilization is None else int(utilization.memory)
            )
            gpu["ecc_uncorrected_errors"] = _optional(nvml, _ecc_errors, nvml, handle)
            mask = _optional(nvml, _throttle_mask, nvml, handle)
        except nvml.NVMLError as exc:
            reason = f"NVML query failed ({_describe(exc)})"
            return gpu | {"status": HealthStatus.UNHEALTHY.value, "reason": reason}
        throttles = [n for bit, n in THROTTLE_REASONS.items() if mask is not None and mask & bit]
        gpu["throttle_reasons"] = throttles
        status, reasons = HealthStatus.HEALTHY, []
        ecc = gpu["ecc_uncorrected_errors"]
        if ecc:
            status = HealthStatus.UNHEALTHY
            reasons.append(f"{ecc} uncorrected ECC errors")
        temperature = gpu["temperature_c"]
        if temperature >= self.temperature_critical_c:
            status = HealthStatus.UNHEALTHY
            reasons.append(
                f"temperature {temperature} C >= critical {self.temperature_critical_c} C"
            )
        elif temperature >= self.temperature_warn_c:
            status = HealthStatus.worst([status, HealthStatus.DEGRADED])
            reasons.append(f"temperature {temperature} C >= warning {self.temperature_warn_c} C")
        hardware_throttles = [t for t in throttles if t in _DEGRADING_THROTTLES]
        if hardware_throttles:
            status = HealthStatus.worst([status, HealthStatus.DEGRADED])
            reasons.append("throttled: " + ", ".join(hardware_throttles))
        return gpu | {"status": status.value, "reason": ", ".join(reasons) or None}


def _ecc_errors(nvml: Any, handle: Any) -> int:
    return int(
        nvml.nvmlDeviceGetTotalEccErrors(
            handle,
            getattr(
                nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", _NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            ),
            getattr(nvml, "NVML_VOLATILE_ECC", _NVML_VOLATILE_ECC),
        )
    )


def _throttle_mask(nvml: Any, handle: Any) -> int:
    # Newer NVML renamed "clocks throttle reasons" to "clocks event reasons"; same bits.
    query = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if query is None:
        query = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(query(handle))


def _supported(nvml: Any, query: Any, *args: Any) -> Any:
    """Run ``query``; None when the GPU does not support it (consumer GPUs have no ECC)."""
    try:
        return query(*args)
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == getattr(
            nvml, "NVML_ERROR_NOT_SUPPORTED", _NVML_ERROR_NOT_SUPPORTED
        ):
            return None
        raise


def _optional(nvml: Any, query: Any, *args: Any) -> int | None:
    """`_supported` for an integer reading."""
    value = _supported(nvml, query, *args)
    return None if value is None else int(value)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
