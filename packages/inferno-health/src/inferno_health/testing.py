"""Test doubles: a fake NVML module and a scriptable provider, for tests without a GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from inferno_health.providers import NamedProvider
from inferno_health.types import ALL_PROBES, HealthReport, HealthStatus, Probe, utcnow

__all__ = ["FakeGpu", "FakeNvml", "FakeNvmlError", "FakeProvider"]


class FakeNvmlError(Exception):
    """Raised by `FakeNvml` like ``pynvml.NVMLError``: ``value`` is the NVML error code."""

    def __init__(self, value: int, message: str | None = None) -> None:
        super().__init__(message or f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    """One simulated GPU. Change fields between checks to script a scenario.

    ``ecc_uncorrected_errors=None`` means ECC is not supported (a consumer GPU);
    ``utilization_gpu_percent=None`` means utilization is not reported (a MIG instance, some
    virtual GPUs); ``lost=True`` makes every query fail like a GPU that fell off the bus.
    """

    name: str = "Fake GPU 80GB"
    temperature_c: int = 40
    memory_total_bytes: int = 80 * 2**30
    memory_used_bytes: int = 2**30
    utilization_gpu_percent: int | None = 0
    utilization_memory_percent: int = 0
    ecc_uncorrected_errors: int | None = 0
    throttle_reasons: int = 0
    lost: bool = False


@dataclass
class FakeNvml:
    """Quacks like the ``pynvml`` module for the calls `GpuHealthProvider` makes.

    ``driver_loaded=False`` makes ``nvmlInit`` fail like a machine without the NVIDIA driver.
    ``calls`` records every function called, for assertions.
    """

    gpus: Sequence[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver_loaded: bool = True
    calls: list[str] = field(default_factory=list)
    initialised: bool = False

    NVMLError = FakeNvmlError
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def nvmlInit(self) -> None:  # noqa: N802 - the NVML spelling
        self.calls.append("nvmlInit")
        if not self.driver_loaded:
            raise FakeNvmlError(self.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("nvmlShutdown")
        self._require_init()
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self.calls.append("nvmlDeviceGetCount")
        self._require_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self.calls.append("nvmlDeviceGetHandleByIndex")
        self._require_init()
        return self._live(self.gpus[index])

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:  # noqa: N802
        return self._live(handle).name

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:  # noqa: N802
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return self._live(handle).temperature_c

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Any:  # noqa: N802
        gpu = self._live(handle)
        free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return SimpleNamespace(total=gpu.memory_total_bytes, used=gpu.memory_used_bytes, free=free)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:  # noqa: N802
        gpu = self._live(handle)
        if gpu.utilization_gpu_percent is None:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return SimpleNamespace(
            gpu=gpu.utilization_gpu_percent, memory=gpu.utilization_memory_percent
        )

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: FakeGpu, error_type: int, counter_type: int
    ) -> int:
        gpu = self._live(handle)
        if error_type != self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        if gpu.ecc_uncorrected_errors is None:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED, "Not Supported")
        return gpu.ecc_uncorrected_errors

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeGpu) -> int:  # noqa: N802
        return self._live(handle).throttle_reasons

    def _require_init(self) -> None:
        if not self.initialised:
            raise FakeNvmlError(self.NVML_ERROR_UNINITIALIZED, "Uninitialized")

    def _live(self, gpu: FakeGpu) -> FakeGpu:
        if gpu.lost:
            raise FakeNvmlError(self.NVML_ERROR_GPU_IS_LOST, "GPU is lost")
        return gpu


class FakeProvider(NamedProvider):
    """A provider whose outcome a test sets: a status, an exception, or a hang.

    ``report`` is returned by ``check()`` unless ``error`` is set (then raised) or ``hang`` is
    True (then ``check()`` sleeps until cancelled). ``calls`` counts the checks.
    """

    def __init__(
        self,
        name: str,
        status: HealthStatus = HealthStatus.HEALTHY,
        reason: str | None = None,
        *,
        probes: Iterable[Probe] = ALL_PROBES,
    ) -> None:
        self._name = name
        self._probes = frozenset(probes)
        self.report = HealthReport(status=status, reason=reason)
        self.error: Exception | None = None
        self.hang = False
        self.calls = 0

    def set(self, status: HealthStatus, reason: str | None = None) -> None:
        """Report ``status`` (with ``reason``) from the next check on."""
        self.report = HealthReport(status=status, reason=reason)
        self.error = None
        self.hang = False

    async def check(self) -> HealthReport:
        """Return, raise or hang as configured."""
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.report.model_copy(update={"checked_at": utcnow()})
